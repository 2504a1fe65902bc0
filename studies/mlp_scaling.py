"""S2 — model scaling with MLP heads on embeddings (paper §4.2, Fig 4 middle, §E.6): global 2-layer MLP
(hidden 250..4000, Table 7) vs TTT of its last layer over the frozen hidden features (k = 100, lr 5e-3,
50 full-batch Adam steps, Table 8) vs majority vote (k = 10) in the hidden space.

The paper runs this on CLIP ViT-B/32 ImageNet embeddings. Neither is available offline, so the embedded
default runs on MNIST pixels (784-d, L2-normalised) as stand-in "embeddings" and says so in its output;
point it at real embeddings with --embeddings or --image-folder.

Run (from the repository root):
    python studies/mlp_scaling.py                # embedded default: MNIST pixels, hidden 250 / 1000 / 4000,
                                                 # 2 epochs, 1000 test points; a few minutes on a laptop CPU
    python studies/mlp_scaling.py --embeddings imagenet_train.npy imagenet_val.npy --paper
    python studies/mlp_scaling.py --image-folder /data/imagenet/train /data/imagenet/val --paper
    python studies/mlp_scaling.py --resume       # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/mlp_scaling.py -- --paper --embeddings train.parquet val.parquet --address auto
Every trial is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no cluster is given,
and finished trials' rows (under <out-dir>/sweeps/ or --storage-path) are reused, never recomputed.
Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs parameters), the table printed.
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
from harness.models.mlp import MLP_SPECS  # noqa: E402
from harness.report import finish_study, format_table  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, embedding_head_trial  # noqa: E402
from harness.trials.mnist import add_engine_argument  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MlpScalingConfig:
    hidden: tuple[int, ...] = (250, 1000, 4000)  # smallest, middle and largest of Table 7
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = 2  # None: Table 7's 50
    test_points: int | None = 1000  # None: the whole test set
    source: EmbeddingSource = EmbeddingSource()  # MNIST pixels unless --embeddings / --image-folder
    out_dir: str = "results/mlp_scaling"
    device: str | None = None
    engine: str = "exact"  # head-TTT engine; "fused-fp16" etc. are the Triton GPU paths (HEAD_TTT_ENGINES)
    study: str = "mlp_scaling"
    sweep: SweepOptions = SweepOptions()  # Ray address, Tune storage, resume, resources per trial

    def trials(self) -> list[EmbeddingHeadConfig]:
        return [EmbeddingHeadConfig(source=self.source, hidden=h, seed=s, epochs=self.epochs,
                                    test_points=self.test_points, device=self.device, engine=self.engine,
                                    cache_dir=f"{self.out_dir}/features") for h in self.hidden for s in self.seeds]


PAPER = MlpScalingConfig(hidden=tuple(sorted(MLP_SPECS)), epochs=None, test_points=None,
                         out_dir="results/mlp_scaling_paper")


def parse_args(argv: list[str] | None, default: MlpScalingConfig = MlpScalingConfig(),
               paper: MlpScalingConfig = PAPER, doc: str | None = __doc__) -> MlpScalingConfig:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="Table 7 sizes, 50 epochs, the whole test set")
    p.add_argument("--hidden", type=int, nargs="+", help=f"hidden sizes (of {sorted(MLP_SPECS)})")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--test-points", type=int)
    add_embedding_arguments(p)
    p.add_argument("--out-dir")
    p.add_argument("--device")
    add_engine_argument(p)
    add_sweep_args(p)
    a = p.parse_args(argv)
    base = paper if a.paper else default
    out_dir = a.out_dir or base.out_dir
    overrides = {"hidden": tuple(a.hidden) if a.hidden else None, "seeds": tuple(a.seeds) if a.seeds else None,
                 "epochs": a.epochs, "test_points": a.test_points, "out_dir": a.out_dir, "device": a.device,
                 "engine": a.engine, "source": embedding_source_from_args(a, f"{out_dir}/clip"),
                 "sweep": sweep_options_from_args(a)}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def run(cfg: MlpScalingConfig) -> pl.DataFrame:
    """Every (hidden, seed) trial's rows, one Ray Tune trial each (finished ones are read back)."""
    trials = cfg.trials()  # validates every trial config before any work starts
    splits = cfg.source.load()
    return run_trials(trials, functools.partial(embedding_head_trial, study=cfg.study),
                      cfg.sweep.sweep(cfg.study, cfg.out_dir, cfg.device), name=lambda t: f"hidden-{t.hidden}-{t.seed}",
                      shared={"splits": splits}, resume=cfg.sweep.resume, address=cfg.sweep.address)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    outputs = finish_study(
        run(cfg).filter(pl.col("metric") == "error"), cfg.out_dir, by=["model_size", "method", "metric"],
        figure={"metric": "error", "x": "model_size", "xlabel": "Hidden dimension", "ylabel": "Test error",
                "title": "MLP heads on embeddings (S2)", "percent": True},
    )
    print(f"data: {cfg.source.describe()}")
    print(f"heads: Table 7 MLPs, {cfg.epochs or 50} epochs; TTT k 100, lr 5e-3, 50 steps; {cfg.test_points or 'all'} test points")
    print(format_table(outputs.table, "model_size", "error"))
    print("paper (Fig 4 middle, ImageNet): TTT < global < majority vote at small hidden sizes, the gap shrinking with size")
    print(f"\nwrote {outputs.points}, {outputs.summary} and {outputs.figure}")
    return outputs.table


if __name__ == "__main__":
    main()
