"""S10 — cross-entropy ablation (paper App. D, Fig 6): test cross-entropy of the global MLP head vs TTT,
over all test points (left) and over the points that either model predicts correctly (right).

Same trials as S2 (studies/mlp_scaling.py: Table 7 heads, Table 8 TTT, the same options); the embedded
default runs on MNIST pixels as stand-in embeddings (no ImageNet / CLIP offline) and says so in its output.

Run (from the repository root):
    python studies/cross_entropy.py              # embedded default: MNIST pixels, hidden 250 / 1000, 2 epochs,
                                                 # 1000 test points; a couple of minutes on a laptop CPU
    python studies/cross_entropy.py --paper --embeddings imagenet_train.npy imagenet_val.npy
    python studies/cross_entropy.py --resume     # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/cross_entropy.py -- --paper --embeddings train.parquet val.parquet

Output: <out-dir>/points.parquet, summary.parquet, figure_all.png, figure_either_correct.png, tables printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.figures import plot_metric_vs  # noqa: E402
from dashboards.outputs import finish_study, format_table  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from studies.mlp_scaling import PRESETS as S2_PRESETS  # noqa: E402
from studies.mlp_scaling import MlpScaling, run_heads  # noqa: E402

PRESETS = {
    "paper": dataclasses.replace(S2_PRESETS["paper"], out_dir="results/cross_entropy_paper"),
    "smoke_test": dataclasses.replace(S2_PRESETS["smoke_test"], out_dir="results/cross_entropy_smoke"),
}
DEFAULT = MlpScaling(hidden=(250, 1000), out_dir="results/cross_entropy")
METRICS = {  # metric -> (figure suffix, what the points are)
    "cross_entropy": ("all", "all test points"),
    "cross_entropy_either_correct": ("either_correct", "points global or TTT gets right"),
}


parse = study_parser(MlpScaling, PRESETS, __doc__, default=DEFAULT)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    rows = run_heads(cfg, "cross_entropy")
    rows = rows.filter(pl.col("metric").is_in(list(METRICS)) & pl.col("method").is_in(["global", "ttt"]))
    outputs = finish_study(rows, cfg.out_dir, by=["model_size", "method", "metric"],
                           stand_in=cfg.data.source(cfg.out_dir).stand_in)
    figures = [plot_metric_vs(outputs.table.filter(pl.col("metric") == m), x="model_size", xlabel="Hidden dimension",
                              ylabel="Test cross-entropy (nats)", title=f"S10: {label}",
                              path=Path(cfg.out_dir) / f"figure_{suffix}.png")
               for m, (suffix, label) in METRICS.items()]
    print(f"data: {cfg.data.source(cfg.out_dir).describe()}")
    for m, (_, label) in METRICS.items():
        print(f"\n{label}:")
        print(format_table(outputs.table, "model_size", m, percent=False))
    print("\npaper (Fig 6, ImageNet): over all points TTT's CE is higher than global's; over the points either "
          "model gets right TTT's CE is clearly lower")
    print(f"\nwrote {outputs.points}, {outputs.summary}, {figures[0]} and {figures[1]}")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
