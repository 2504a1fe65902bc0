"""S10 — cross-entropy ablation (paper App. D, Fig 6): test cross-entropy of the global MLP head vs TTT,
over all test points (left) and over the points that either model predicts correctly (right).

Same trials as S2 (studies/mlp_scaling.py: Table 7 heads, Table 8 TTT); the embedded default runs on
MNIST pixels as stand-in embeddings (no ImageNet / CLIP offline) and says so in its output.

Run (from the repository root):
    python studies/cross_entropy.py              # embedded default: MNIST pixels, hidden 250 / 1000, 2 epochs,
                                                 # 1000 test points; a couple of minutes on a laptop CPU
    python studies/cross_entropy.py --embeddings imagenet_train.npy imagenet_val.npy --paper
    python studies/cross_entropy.py --resume     # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/cross_entropy.py -- --paper --embeddings train.parquet val.parquet --address auto
Every trial is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no cluster is given,
and finished trials' rows (under <out-dir>/sweeps/ or --storage-path) are reused, never recomputed.
Output: <out-dir>/points.parquet, summary.parquet, figure_all.png, figure_either_correct.png, tables printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.report import finish_study, format_table  # noqa: E402
from studies.mlp_scaling import PAPER, MlpScalingConfig, parse_args, run  # noqa: E402

DEFAULT = MlpScalingConfig(hidden=(250, 1000), out_dir="results/cross_entropy", study="cross_entropy")
METRICS = {  # metric -> (figure suffix, what the points are)
    "cross_entropy": ("all", "all test points"),
    "cross_entropy_either_correct": ("either_correct", "points global or TTT gets right"),
}


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv, DEFAULT, dataclasses.replace(PAPER, out_dir="results/cross_entropy_paper",
                                                        study="cross_entropy"), __doc__)
    rows = run(cfg).filter(pl.col("metric").is_in(list(METRICS)) & pl.col("method").is_in(["global", "ttt"]))
    outputs = finish_study(rows, cfg.out_dir, by=["model_size", "method", "metric"])
    from dashboards.figures import plot_metric_vs

    figures = [plot_metric_vs(outputs.table.filter(pl.col("metric") == m), x="model_size", xlabel="Hidden dimension",
                              ylabel="Test cross-entropy (nats)", title=f"S10: {label}",
                              path=Path(cfg.out_dir) / f"figure_{suffix}.png")
               for m, (suffix, label) in METRICS.items()]
    print(f"data: {cfg.source.describe()}")
    for m, (_, label) in METRICS.items():
        print(f"\n{label}:")
        print(format_table(outputs.table, "model_size", m, percent=False))
    print("\npaper (Fig 6, ImageNet): over all points TTT's CE is higher than global's; over the points either "
          "model gets right TTT's CE is clearly lower")
    print(f"\nwrote {outputs.points}, {outputs.summary}, {figures[0]} and {figures[1]}")
    return outputs.table


if __name__ == "__main__":
    main()
