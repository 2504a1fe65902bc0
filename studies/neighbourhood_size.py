"""S5 — neighbourhood size (paper §4.2, Fig 5 right): TTT error of the linear head on embeddings as the
number of neighbours k grows; the paper finds a U-shape (small k: too little diversity; large k: too
little locality). The sweep runs past the size of one class (ImageNet: ~1,230 images a class; the MNIST
stand-in: ~5,000), where a neighbourhood must mix classes and the U's far arm appears. TTT as in §E.6:
lr 0.02, 50 full-batch Adam steps; the global head (Adam lr 1e-3,
batch 250) is trained once and cached.

The embedded default runs on MNIST pixels (784-d, L2-normalised) as stand-in embeddings (no ImageNet /
CLIP offline) and says so in its output; point it at real embeddings with --embeddings / --image-folder.

Run (from the repository root):
    python studies/neighbourhood_size.py         # embedded default: MNIST pixels, k = 3..10000, 2 epochs,
                                                 # 500 test points; a few minutes on a laptop CPU
    python studies/neighbourhood_size.py --paper --embeddings imagenet_train.npy imagenet_val.npy
    python studies/neighbourhood_size.py --resume  # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/neighbourhood_size.py -- --paper --embeddings train.parquet val.parquet

Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs k), the table printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.outputs import finish_study  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, EmbeddingOptions  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402


@dataclasses.dataclass(frozen=True)
class NeighbourhoodSize:
    """S5's options (each trial: one k, the same global linear head)."""

    ks: tuple[int, ...] = (3, 10, 30, 100, 300, 1000, 3000, 10000)  # neighbourhood sizes k (past one class: ~5k)
    seed: int = 0  # global-training seed
    epochs: int | None = 2  # global linear head epochs (None: §E.6's 50)
    ttt_lr: float = 0.02  # TTT Adam learning rate (§E.6)
    ttt_steps: int = 50  # TTT full-batch Adam steps (§E.6)
    test_points: int | None = 500  # test points, a fixed seeded subset (None: the whole test set)
    out_dir: str = "results/neighbourhood_size"  # tables, figure and the sweep's storage
    data: EmbeddingOptions = EmbeddingOptions()
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    def trials(self) -> list[EmbeddingHeadConfig]:
        source = self.data.source(f"{self.out_dir}/clip")
        return [EmbeddingHeadConfig(source=source, hidden=None, seed=self.seed, epochs=self.epochs, ttt_k=k,
                                    ttt_lr=self.ttt_lr, ttt_steps=self.ttt_steps, majority_k=0,
                                    test_points=self.test_points, **dataclasses.asdict(self.compute),
                                    study="neighbourhood_size", cache_dir=str(Path(self.out_dir, "features").resolve()))
                for k in self.ks]


PRESETS = {
    "paper": NeighbourhoodSize(ks=(10, 30, 100, 300, 600, 1000, 3000, 10000), epochs=None, test_points=None,
                               out_dir="results/neighbourhood_size_paper"),
    "smoke_test": NeighbourhoodSize(ks=(3, 30), epochs=1, test_points=100, out_dir="results/neighbourhood_size_smoke"),
}


def global_at_every_k(rows: pl.DataFrame, ks: tuple[int, ...]) -> pl.DataFrame:
    """The global head does not depend on k (every trial evaluates the same one): its rows once per point,
    repeated at each k so the figure and table show it as a flat reference line."""
    glob = rows.filter(pl.col("method") == "global")
    glob = glob.unique(subset=["point_id", "metric"], keep="first", maintain_order=True).drop("k")
    grid = pl.DataFrame({"k": list(ks)}, schema={"k": rows.schema["k"]})
    return pl.concat([rows.filter(pl.col("method") != "global"), glob.join(grid, how="cross").select(rows.columns)])


parse = study_parser(NeighbourhoodSize, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    rows = run_study(cfg, trials, name="neighbourhood_size", out_dir=cfg.out_dir, metric="ttt_error",
                     shared={"splits": trials[0].source.load()})
    outputs = finish_study(
        global_at_every_k(rows.filter(pl.col("metric") == "error"), cfg.ks), cfg.out_dir, by=["k", "method", "metric"],
        stand_in=trials[0].source.stand_in,
        figure={"metric": "error", "x": "k", "xlabel": "Number of neighbours k", "ylabel": "Test error",
                "title": "Neighbourhood size (S5)", "percent": True},
    )
    ttt = outputs.table.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error")).sort("k")
    best = ttt.row(ttt["mean"].arg_min(), named=True)
    outputs.print_report(
        f"data: {trials[0].source.describe()}; linear head, {cfg.epochs or 50} epochs; TTT lr {cfg.ttt_lr}, "
        f"{cfg.ttt_steps} steps; {cfg.test_points or 'all'} test points", index="k",
        paper=f"best k = {best['k']} ({100 * best['mean']:.2f}% error); paper (Fig 5 right, ImageNet): U-shape in k, "
              "the optimum trading locality against diversity (its TTT uses k = 600)")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
