"""S6 (MoE scaling on MNIST, paper §E.5 / Fig 7): one expert count E of the mixture of linear-head
experts over a LeNet's features, evaluated on a fixed set of test points."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl
import torch

from harness.data.mnist import ImageSplits, load_mnist
from harness.devices import trial_device
from harness.errors import ConfigError
from harness.models.lenet import Init, lenet_for_size
from harness.registry import register_trial
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.kmeans import kmeans_centroids
from harness.trials.mnist import (
    MnistTrialConfig,
    check_at_least,
    check_device,
    check_neighbourhoods,
    check_seed,
    check_test_points,
    mnist_features,
    mnist_input_files,
    test_subset,
)
from harness.trials.options import Device, Split
from harness.ttt.linear import HeadTTTConfig
from harness.ttt.moe import expert_neighbours, moe_logits, moe_spec, route_to_centroids


@dataclasses.dataclass(frozen=True)
class MoETrialConfig:
    """One expert count E. None means Table 6's value for E (lr, epochs, neighbours)."""

    experts: int
    model_size: int = 3246  # the LeNet whose features and head the experts start from (the paper's S6 net)
    seed: int = 0
    epochs: int | None = None  # global CNN training epochs (None: Table 3)
    init: Init = "pytorch"  # the CNN's initialisation (MnistTrialConfig.init)
    test_points: int | None = None
    lr: float | None = None
    steps: int | None = None  # Table 6 "epochs" of full-batch Adam on the centroid's neighbours
    neighbours: int | None = None
    kmeans_iterations: int = 20
    kmeans_restarts: int = 1  # k-means runs from different initial centroids, the best kept (the paper's code: 20)
    chunk: int = 1024  # experts fitted at once (bounds memory)
    split: Split = "test"
    data_dir: str | None = None
    retriever: str = "faiss"
    device: Device | None = None
    cache_dir: str | None = None
    study: str = "moe_scaling"  # the study named in the rows

    def __post_init__(self) -> None:
        lenet_for_size(self.model_size)
        if self.experts < 1:
            raise ConfigError(f"experts must be >= 1, got {self.experts}")
        if self.lr is None or self.steps is None or self.neighbours is None:
            moe_spec(self.experts)  # raises unless Table 6 fills the gaps
        check_at_least(self, ("steps", "kmeans_iterations"), 0)
        check_at_least(self, ("neighbours", "chunk", "kmeans_restarts"), 1)
        if self.split not in ("test", "val"):
            raise ConfigError(f"split must be 'test' or 'val', got {self.split!r}")
        check_device(self.device)
        check_seed(self.seed)

    def input_files(self) -> tuple[str, ...]:
        return mnist_input_files(self.data_dir)

    def check_inputs(self, images: ImageSplits | None = None, **_: object) -> None:
        """Checks against the data, run by the study before any work: experts and their neighbours fit."""
        images = images if images is not None else load_mnist(self.data_dir)
        n, where = images.train_y.size, f"the {images.train_y.size} training images"
        check_neighbourhoods({"experts": (self.experts, ""), "neighbours": (self.ttt_config().k, "")}, n, where)
        check_test_points(self.test_points, (images.test_y if self.split == "test" else images.val_y).size, self.split)

    def ttt_config(self) -> HeadTTTConfig:
        lr, steps, k = self.lr, self.steps, self.neighbours
        if lr is None or steps is None or k is None:  # Table 6 fills the gaps
            spec = moe_spec(self.experts)
            lr = spec.lr if lr is None else lr
            steps = spec.epochs if steps is None else steps
            k = spec.neighbours if k is None else k
        return HeadTTTConfig(lr=lr, steps=steps, k=k)

    def features_config(self) -> MnistTrialConfig:
        """The S1 trial whose CNN (features + head) this MoE shares: same cache key, same model."""
        return MnistTrialConfig(model_size=self.model_size, seed=self.seed, epochs=self.epochs, init=self.init,
                                data_dir=self.data_dir, device=self.device, cache_dir=self.cache_dir)


@register_trial("moe", MoETrialConfig)
def moe_trial(cfg: MoETrialConfig, images: ImageSplits | None = None) -> pl.DataFrame:
    """Per-point rows of method "moe" (error, cross_entropy) for E = cfg.experts."""
    start = time.perf_counter()
    feats, weight, bias = mnist_features(cfg.features_config(), images)
    if cfg.experts > feats.train_x.shape[0]:
        raise ConfigError(f"experts = {cfg.experts} exceeds the {feats.train_x.shape[0]} training points")
    ttt = cfg.ttt_config()
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    device = trial_device(cfg.device)

    centroids = kmeans_centroids(feats.train_x, cfg.experts, cfg.kmeans_iterations, seed=cfg.seed,
                                 restarts=cfg.kmeans_restarts)  # (E, d)
    neighbours = expert_neighbours(feats.train_x, centroids, ttt.k, cfg.retriever)  # (E, k)
    routes = route_to_centroids(x[subset], centroids, cfg.retriever)  # (n,)

    def t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)

    logits = moe_logits(t(weight), t(bias), t(feats.train_x), t(feats.train_y, torch.int64), t(centroids),
                        t(neighbours, torch.int64), t(x[subset]), t(routes, torch.int64), ttt, cfg.chunk)
    labels = t(y[subset], torch.int64)
    run = RunInfo(study=cfg.study, dataset=f"mnist-{cfg.split}", model_size=cfg.model_size, seed=cfg.seed, k=ttt.k,
                  experts=cfg.experts, fraction=1.0, config_hash=config_hash(cfg), device=str(device),
                  wall_time_s=time.perf_counter() - start)
    hp = {"lr": ttt.lr, "steps": ttt.steps, "neighbours": ttt.k, "kmeans_iterations": cfg.kmeans_iterations,
          "kmeans_restarts": cfg.kmeans_restarts}
    error = (logits.argmax(1) != labels).double().cpu().numpy()
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
    return pl.concat([point_rows(run, "moe", "error", error, subset, hparams=hp),
                      point_rows(run, "moe", "cross_entropy", ce, subset, hparams=hp)])
