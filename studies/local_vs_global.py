"""S7 — local vs global TTT heads on MNIST (paper §4.2, Table 2): accuracy of the global head, of each
test point's TTT head on that point, of the same head on its own training neighbourhood, and of ten
randomly chosen TTT heads on the whole test set.

Run (from the repository root):
    python studies/local_vs_global.py            # embedded default: real MNIST, LeNet-1268 trained 3 epochs,
                                                 # Table 4 TTT, 1000 test points; about a minute on a laptop CPU
    python studies/local_vs_global.py --paper    # Table 3 epochs, the full 10k test set
    python studies/local_vs_global.py --resume   # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/local_vs_global.py -- --paper --seeds 0 1 2 --address auto
Every trial is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no cluster is given,
and finished trials' rows (under <out-dir>/sweeps/ or --storage-path) are reused, never recomputed.
Output: <out-dir>/points.parquet, summary.parquet, table2.md (ours beside the paper's), printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.study_sweep import SweepOptions, add_sweep_args, sweep_options_from_args, run_trials  # noqa: E402
from harness.report import finish_study  # noqa: E402
from harness.trials.mnist import add_engine_argument  # noqa: E402
from harness.results.atomic import atomic_path  # noqa: E402
from harness.trials.local_vs_global import PAPER_TABLE2, LocalVsGlobalConfig, local_vs_global_trial  # noqa: E402

COLUMNS = (("global", "accuracy", "Global"), ("ttt", "accuracy", "TTT on test sample"),
           ("ttt", "accuracy_neighbourhood", "TTT on neighbourhood"), ("ttt", "accuracy_test_set", "Global TTT"))


@dataclasses.dataclass(frozen=True)
class LocalVsGlobalStudy:
    model_size: int = 1268  # the paper does not name Table 2's CNN
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = 3  # None: Table 3
    test_points: int | None = 1000
    global_heads: int = 10
    out_dir: str = "results/local_vs_global"
    data_dir: str | None = None
    device: str | None = None
    engine: str = "exact"  # head-TTT engine (HEAD_TTT_ENGINES)
    sweep: SweepOptions = SweepOptions()  # Ray address, Tune storage, resume, resources per trial

    def trials(self) -> list[LocalVsGlobalConfig]:
        return [LocalVsGlobalConfig(model_size=self.model_size, seed=s, epochs=self.epochs, test_points=self.test_points,
                                    global_heads=self.global_heads, data_dir=self.data_dir, device=self.device,
                                    engine=self.engine, cache_dir=f"{self.out_dir}/features") for s in self.seeds]


PAPER = LocalVsGlobalStudy(epochs=None, test_points=None, out_dir="results/local_vs_global_paper")


def parse_args(argv: list[str] | None) -> LocalVsGlobalStudy:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="the paper's full setting")
    p.add_argument("--model-size", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--test-points", type=int)
    p.add_argument("--global-heads", type=int)
    p.add_argument("--out-dir")
    p.add_argument("--data-dir")
    p.add_argument("--device")
    add_engine_argument(p)
    add_sweep_args(p)
    a = p.parse_args(argv)
    base = PAPER if a.paper else LocalVsGlobalStudy()
    overrides = {"model_size": a.model_size, "seeds": tuple(a.seeds) if a.seeds else None, "epochs": a.epochs,
                 "test_points": a.test_points, "global_heads": a.global_heads, "out_dir": a.out_dir,
                 "data_dir": a.data_dir, "device": a.device, "engine": a.engine, "sweep": sweep_options_from_args(a)}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def table2(summary: pl.DataFrame) -> str:
    """Markdown Table 2: our accuracy (90% CI) beside the paper's MNIST and ImageNet rows."""
    cells = []
    for method, metric, _ in COLUMNS:
        r = summary.filter((pl.col("method") == method) & (pl.col("metric") == metric))
        cells.append(f"{100 * r['mean'][0]:.2f} [{100 * r['ci_low'][0]:.2f}, {100 * r['ci_high'][0]:.2f}]"
                     if r.height else "-")
    lines = ["| accuracy (%) | " + " | ".join(c for _, _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|",
             "| ours, MNIST (90% CI) | " + " | ".join(cells) + " |"]
    for name, values in PAPER_TABLE2.items():
        lines.append(f"| paper, {name} (± s.e.) | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    trials = cfg.trials()
    images = load_mnist(cfg.data_dir)
    rows = run_trials(trials, local_vs_global_trial, cfg.sweep.sweep("local_vs_global", cfg.out_dir, cfg.device),
                      name=lambda t: f"{t.model_size}-{t.seed}", shared={"images": images},
                      resume=cfg.sweep.resume, address=cfg.sweep.address)
    outputs = finish_study(rows, cfg.out_dir, by=["method", "metric"])
    text = table2(outputs.table)
    with atomic_path(Path(cfg.out_dir) / "table2.md") as tmp:
        tmp.write_text(text + "\n")
    print(f"data: real MNIST, LeNet-{cfg.model_size} ({cfg.epochs or 'Table 3'} epochs), Table 4 TTT, "
          f"{cfg.test_points or 'all'} test points, {cfg.global_heads} global TTT heads")
    print(text)
    print(f"\nwrote {outputs.points}, {outputs.summary} and {Path(cfg.out_dir) / 'table2.md'}")
    return outputs.table


if __name__ == "__main__":
    main()
