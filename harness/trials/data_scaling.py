"""S4 on MNIST as the paper's code does it (`scaling/mnist/g_scale_dataset/mnist_scale_dataset.py`):
the features are fixed, the head is retrained per training-set fraction.

    reference CNN: one LeNet-600 (the paper's size_scale 0.5) trained once on the whole training set
                   (Adam lr 5e-3, batch 400, 50 epochs; `parameters/reference_mnist_model.yaml`)
    per fraction:  a class-balanced subsample of its training features; a *new* linear head trained on it
                   (Adam lr 5e-3, batch 400, 100 epochs); TTT starts from that head (k 80, lr 0.02,
                   500 full-batch steps) and retrieves from the subsample only

The trunk never sees the fraction: only the head does. (`MnistTrialConfig(fraction=f)` is the other
protocol, retraining the whole CNN on the subsample: S4's `--protocol retrain-cnn`.)
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl
import torch

from harness.data.mnist import ImageSplits, load_mnist
from harness.data.subsample import class_balanced_subsample
from harness.devices import trial_device
from harness.distributed.sharding import ShardingConfig
from harness.errors import ConfigError
from harness.models.training import TrainConfig, train_classifier
from harness.registry import register_trial
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.trials.mnist import (
    MnistTrialConfig,
    check_device,
    check_engine,
    check_engine_on_device,
    check_neighbourhoods,
    check_seed,
    check_test_points,
    check_ttt_options,
    mnist_features,
    test_subset,
)
from harness.trials.options import Device, HeadEngine, Split
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator, prediction_metrics
from harness.ttt.linear import HeadTTTConfig

# the reference CNN of the paper's S4 (reference_mnist_model.yaml): LeNet-600, Adam lr 5e-3, batch 400, 50 epochs
REFERENCE_CNN = MnistTrialConfig(model_size=600, epochs=50, train_lr=5e-3, train_batch_size=400)
HEAD_EPOCHS = 100  # each fraction's new linear head (the paper's code)


@dataclasses.dataclass(frozen=True)
class FixedFeaturesConfig:
    """One training-set fraction of S4 on fixed CNN features: a new linear head, then its TTT."""

    fraction: float  # class-balanced fraction of the training set the head is trained on and TTT retrieves from
    seed: int = 0  # the reference CNN's training seed, the subsample's and the head's
    reference: MnistTrialConfig = REFERENCE_CNN  # the CNN whose features are fixed (trained on all the data)
    head_lr: float = 5e-3  # the linear head's Adam learning rate (the paper's code)
    head_batch_size: int = 400
    head_epochs: int = HEAD_EPOCHS
    ttt_k: int = 80  # §E.4, dataset scaling
    ttt_lr: float = 0.02
    ttt_steps: int = 500
    test_points: int | None = None
    split: Split = "test"
    retriever: str = "faiss"
    engine: HeadEngine = "auto"  # head-TTT engine (harness.ttt.head_engines: auto picks per device)
    device: Device | None = None
    cache_dir: str | None = None  # the reference CNN's features are cached here (shared by every fraction)
    study: str = "data_scaling"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.reference.fraction != 1.0:
            raise ConfigError(f"the reference CNN is trained on the whole training set (fraction 1.0), got "
                              f"reference.fraction = {self.reference.fraction}")
        if self.test_points is not None and self.test_points < 1:
            raise ConfigError(f"test_points must be >= 1, got {self.test_points}")
        TrainConfig(self.head_lr, self.head_batch_size, self.head_epochs)  # raises naming the bad value
        check_ttt_options(self)
        check_engine(self.engine)
        check_device(self.device)
        check_seed(self.seed)

    def input_files(self) -> tuple[str, ...]:
        return self.reference.input_files()

    def reference_config(self) -> MnistTrialConfig:
        """The reference CNN's trial (its features' cache key): this trial's seed, device and cache."""
        return dataclasses.replace(self.reference, seed=self.seed, device=self.device, cache_dir=self.cache_dir,
                                   test_points=self.test_points, split=self.split, retriever=self.retriever,
                                   engine=self.engine, ttt_k=self.ttt_k, ttt_lr=self.ttt_lr, ttt_steps=self.ttt_steps,
                                   study=self.study)

    def check_inputs(self, images: ImageSplits | None = None, **_: object) -> None:
        """Checks against the data before any work: k fits in the fraction, test points in the split."""
        images = images if images is not None else load_mnist(self.reference.data_dir)
        n = class_balanced_subsample(images.train_y, self.fraction, seed=self.seed).size
        check_neighbourhoods({"ttt_k": (self.ttt_k, "")}, n,
                             f"fraction {self.fraction} of the {images.train_y.size} training images")
        check_test_points(self.test_points, (images.test_y if self.split == "test" else images.val_y).size, self.split)
        check_engine_on_device(self.engine, self.device)


def train_linear_head(x: np.ndarray, y: np.ndarray, classes: int, cfg: FixedFeaturesConfig,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """A new linear head (PyTorch's default init, seeded) trained on features x (n, d): (W (C, d), c (C,))."""
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(x.shape[1], classes).to(device)
    train_classifier(head, torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(y).to(device),
                     TrainConfig(cfg.head_lr, cfg.head_batch_size, cfg.head_epochs, cfg.seed))
    return head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy()


@register_trial("data_scaling_fixed_features", FixedFeaturesConfig, shardable=True)
def fixed_features_trial(cfg: FixedFeaturesConfig, images: ImageSplits | None = None, *,
                         sharding: ShardingConfig | None = None) -> pl.DataFrame:
    """Per-point rows (global / ttt x error / cross_entropy) of one fraction; model_size is the reference CNN's."""
    start = time.perf_counter()
    device = trial_device(cfg.device)
    feats, _, _ = mnist_features(cfg.reference_config(), images)  # the reference CNN, trained on all the data
    idx = class_balanced_subsample(feats.train_y, cfg.fraction, seed=cfg.seed)
    classes = int(max(feats.train_y.max(), feats.test_y.max())) + 1
    weight, bias = train_linear_head(feats.train_x[idx], feats.train_y[idx], classes, cfg, device)
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    state = HeadState(feats.train_x[idx], feats.train_y[idx], weight, bias)  # TTT retrieves from the subsample
    ttt = HeadTTTConfig(lr=cfg.ttt_lr, steps=cfg.ttt_steps, k=cfg.ttt_k)
    if sharding is None:
        evaluator = HeadTTTEvaluator(state, ttt, majority_k=0, retriever=cfg.retriever, device=cfg.device,
                                     engine=cfg.engine)
        out = evaluator({"point_id": subset, "feature": x[subset], "label": y[subset]})
        where = str(evaluator.device)
    else:
        from harness.distributed.sharding import evaluate_sharded

        out = evaluate_sharded(state, ttt, x[subset], y[subset], subset, sharding, majority_k=0,
                               retriever=cfg.retriever, engine=cfg.engine)
        where = "+".join(sorted(set(out.pop("device").tolist())))
    run = RunInfo(study=cfg.study, dataset=f"mnist-{cfg.split}", model_size=cfg.reference.model_size, seed=cfg.seed,
                  k=cfg.ttt_k, fraction=cfg.fraction, config_hash=config_hash(cfg), device=where,
                  wall_time_s=time.perf_counter() - start)
    hp: dict[str, dict[str, object]] = {
        "global": {"protocol": "fixed-features", "head_lr": cfg.head_lr, "head_batch_size": cfg.head_batch_size,
                   "head_epochs": cfg.head_epochs, "train_points": int(idx.size), "train_device": str(device)},
        "ttt": {"lr": cfg.ttt_lr, "steps": cfg.ttt_steps, "k": cfg.ttt_k,
                "engine": "+".join(sorted(set(out.pop("engine").tolist())))}}  # the engine that ran
    return pl.concat([point_rows(run, method, metric, values, out["point_id"], hparams=hp[method],
                                 k=None if method == "global" else cfg.ttt_k)
                      for method, metric, values in prediction_metrics(out, ttt)])
