"""S5 — neighbourhood size (paper §4.2, Fig 5 right): TTT error of the linear head on embeddings as the
number of neighbours k grows; the paper finds a U-shape (small k: too little diversity; large k: too
little locality). TTT as in §E.6: lr 0.02, 50 full-batch Adam steps; the global head (Adam lr 1e-3,
batch 250) is trained once and cached.

The embedded default runs on MNIST pixels (784-d, L2-normalised) as stand-in embeddings (no ImageNet /
CLIP offline) and says so in its output; point it at real embeddings with --embeddings / --image-folder.

Run (from the repository root):
    python studies/neighbourhood_size.py         # embedded default: MNIST pixels, k = 3..1000, 2 epochs,
                                                 # 500 test points; a few minutes on a laptop CPU
    python studies/neighbourhood_size.py --embeddings imagenet_train.npy imagenet_val.npy --paper
    python studies/neighbourhood_size.py --resume  # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/neighbourhood_size.py -- --paper --embeddings train.parquet val.parquet --address auto
Every trial is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no cluster is given,
and finished trials' rows (under <out-dir>/sweeps/ or --storage-path) are reused, never recomputed.
Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs k), the table printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.embeddings import EmbeddingSource, add_embedding_arguments, embedding_source_from_args  # noqa: E402
from harness.distributed.study_sweep import SweepOptions, add_sweep_args, sweep_options_from_args, run_trials  # noqa: E402
from harness.report import finish_study, format_table  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, embedding_head_trial  # noqa: E402
from harness.trials.mnist import add_engine_argument  # noqa: E402


@dataclasses.dataclass(frozen=True)
class NeighbourhoodSizeConfig:
    ks: tuple[int, ...] = (3, 10, 30, 100, 300, 1000)
    seed: int = 0
    epochs: int | None = 2  # global linear head epochs (None: §E.6's 50)
    ttt_lr: float = 0.02
    ttt_steps: int = 50
    test_points: int | None = 500
    source: EmbeddingSource = EmbeddingSource()
    out_dir: str = "results/neighbourhood_size"
    device: str | None = None
    engine: str = "exact"  # head-TTT engine; "fused-fp16" etc. are the Triton GPU paths (HEAD_TTT_ENGINES)
    sweep: SweepOptions = SweepOptions()  # Ray address, Tune storage, resume, resources per trial

    def trials(self) -> list[EmbeddingHeadConfig]:
        return [EmbeddingHeadConfig(source=self.source, hidden=None, seed=self.seed, epochs=self.epochs, ttt_k=k,
                                    ttt_lr=self.ttt_lr, ttt_steps=self.ttt_steps, majority_k=0,
                                    test_points=self.test_points, device=self.device, engine=self.engine,
                                    cache_dir=f"{self.out_dir}/features") for k in self.ks]


PAPER = NeighbourhoodSizeConfig(ks=(10, 30, 100, 300, 600, 1000, 3000, 10000), epochs=None, test_points=None,
                                out_dir="results/neighbourhood_size_paper")


def parse_args(argv: list[str] | None) -> NeighbourhoodSizeConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="k up to 1e4, 50 epochs, the whole test set")
    p.add_argument("--ks", type=int, nargs="+", help="neighbourhood sizes")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--test-points", type=int)
    add_embedding_arguments(p)
    p.add_argument("--out-dir")
    p.add_argument("--device")
    add_engine_argument(p)
    add_sweep_args(p)
    a = p.parse_args(argv)
    base = PAPER if a.paper else NeighbourhoodSizeConfig()
    out_dir = a.out_dir or base.out_dir
    overrides = {"ks": tuple(a.ks) if a.ks else None, "seed": a.seed, "epochs": a.epochs,
                 "test_points": a.test_points, "out_dir": a.out_dir, "device": a.device, "engine": a.engine,
                 "source": embedding_source_from_args(a, f"{out_dir}/clip"), "sweep": sweep_options_from_args(a)}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def global_at_every_k(rows: pl.DataFrame, ks: tuple[int, ...]) -> pl.DataFrame:
    """The global head does not depend on k (every trial evaluates the same one): its rows once per point,
    repeated at each k so the figure and table show it as a flat reference line."""
    glob = rows.filter(pl.col("method") == "global").unique(subset=["point_id", "metric"], keep="first").drop("k")
    grid = pl.DataFrame({"k": list(ks)}, schema={"k": rows.schema["k"]})
    return pl.concat([rows.filter(pl.col("method") != "global"), glob.join(grid, how="cross").select(rows.columns)])


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    trials = cfg.trials()
    splits = cfg.source.load()
    rows = run_trials(trials, functools.partial(embedding_head_trial, study="neighbourhood_size"),
                      cfg.sweep.sweep("neighbourhood_size", cfg.out_dir, cfg.device), name=lambda t: f"k-{t.ttt_k}",
                      shared={"splits": splits}, resume=cfg.sweep.resume, address=cfg.sweep.address)
    outputs = finish_study(
        global_at_every_k(rows.filter(pl.col("metric") == "error"), cfg.ks), cfg.out_dir, by=["k", "method", "metric"],
        figure={"metric": "error", "x": "k", "xlabel": "Number of neighbours k", "ylabel": "Test error",
                "title": "Neighbourhood size (S5)", "percent": True},
    )
    print(f"data: {cfg.source.describe()}; linear head, {cfg.epochs or 50} epochs; TTT lr {cfg.ttt_lr}, "
          f"{cfg.ttt_steps} steps; {cfg.test_points or 'all'} test points")
    print(format_table(outputs.table, "k", "error"))
    ttt = outputs.table.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error")).sort("k")
    best = ttt.row(ttt["mean"].arg_min(), named=True)
    print(f"best k = {best['k']} ({100 * best['mean']:.2f}% error); paper (Fig 5 right, ImageNet): U-shape in k, "
          "the optimum trading locality against diversity (its TTT uses k = 600)")
    print(f"\nwrote {outputs.points}, {outputs.summary} and {outputs.figure}")
    return outputs.table


if __name__ == "__main__":
    main()
