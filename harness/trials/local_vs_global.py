"""S7 (paper Table 2): is a TTT head good locally or globally? For each test point x* of a model's features:
accuracy of the global head, of x*'s TTT head on x*, of x*'s TTT head on its own training neighbourhood (the
k points it was fitted on), and of `global_heads` randomly chosen TTT heads on the whole test split.

Two kinds of model, as Table 2's two rows: a LeNet on MNIST (the paper's code: the 280-parameter net with
Table 4's TTT, k 200, lr 0.05, 50 steps), or a linear head on embeddings (`source`: CLIP on ImageNet in the
paper, Adam lr 1e-3, batch 250, 50 epochs; TTT k 600, lr 0.02, 50 steps).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch

from harness.data.mnist import ImageSplits
from harness.devices import trial_device
from harness.errors import ConfigError
from harness.features.cache import FeatureSplits
from harness.features.embedding_source import EmbeddingSource
from harness.models.lenet import Init, lenet_for_size
from harness.registry import register_trial
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.index import build_retriever, retrieve_neighbours
from harness.trials.embedding_head import EmbeddingHeadConfig, head_features, source_input_files
from harness.trials.mnist import (
    MnistTrialConfig,
    check_device,
    check_engine,
    dead_feature_rows,
    mnist_features,
    mnist_input_files,
    test_subset,
)
from harness.trials.options import Device, HeadEngine, Split
from harness.ttt.head_engines import HEAD_TTT_ENGINES, resolve_head_engine
from harness.ttt.linear import HeadTTTConfig
from harness.ttt.local import heads_accuracy

LINEAR_HEAD_TTT = HeadTTTConfig(lr=0.02, steps=50, k=600)  # §E.6: TTT of the linear head on CLIP embeddings


@dataclasses.dataclass(frozen=True)
class LocalVsGlobalConfig:
    """One model's Table 2. None means the paper's value: Table 3 / 4 for the LeNet, §E.6 for the linear head."""

    model_size: int = 280  # LeNet size on MNIST (the paper's Table 2 uses the 280-parameter net)
    source: EmbeddingSource | None = None  # embeddings: a linear head on them instead of a LeNet on MNIST
    seed: int = 0
    epochs: int | None = None
    init: Init = "pytorch"  # the LeNet's initialisation (MnistTrialConfig.init)
    test_points: int | None = None
    ttt_lr: float | None = None
    ttt_steps: int | None = None
    ttt_k: int | None = None
    global_heads: int = 10  # TTT heads (of random test points) evaluated on the whole test split
    chunk: int = 256
    split: Split = "test"
    data_dir: str | None = None
    retriever: str = "faiss"
    engine: HeadEngine = "auto"  # head-TTT engine (harness.ttt.head_engines; all of them return the heads)
    device: Device | None = None
    cache_dir: str | None = None
    study: str = "local_vs_global"  # the study named in the rows

    def __post_init__(self) -> None:
        lenet_for_size(self.model_size)
        check_engine(self.engine)
        check_device(self.device)
        if self.global_heads < 0:
            raise ConfigError(f"global_heads must be >= 0, got {self.global_heads}")
        if self.chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {self.chunk}")
        self.model_config()  # validates the shared fields

    def input_files(self) -> tuple[str, ...]:
        return source_input_files(self.source) if self.source is not None else mnist_input_files(self.data_dir)

    def check_inputs(self, images: ImageSplits | None = None, splits: FeatureSplits | None = None,
                     **_: object) -> None:
        """The checks of the trial this shares its model with (k and test points fit, the engine runs here)."""
        model = self.model_config()
        if isinstance(model, EmbeddingHeadConfig):
            model.check_inputs(splits)
        else:
            model.check_inputs(images)

    def ttt_config(self) -> HeadTTTConfig:
        if self.source is None:
            model = self.model_config()
            assert isinstance(model, MnistTrialConfig)  # no source: the LeNet
            mnist = model.resolved()
            assert mnist.ttt_lr is not None and mnist.ttt_steps is not None and mnist.ttt_k is not None  # Table 4
            return HeadTTTConfig(lr=mnist.ttt_lr, steps=mnist.ttt_steps, k=mnist.ttt_k)
        base = LINEAR_HEAD_TTT
        return HeadTTTConfig(lr=self.ttt_lr if self.ttt_lr is not None else base.lr,
                             steps=self.ttt_steps if self.ttt_steps is not None else base.steps,
                             k=self.ttt_k if self.ttt_k is not None else base.k)

    def model_config(self) -> MnistTrialConfig | EmbeddingHeadConfig:
        """The trial whose global model this shares (same feature cache key): the S1 LeNet trial, or the
        linear-head embedding trial; its Table 4 / §E.6 values fill the Nones."""
        common: dict[str, Any] = {"seed": self.seed, "epochs": self.epochs, "test_points": self.test_points,
                                  "split": self.split, "retriever": self.retriever, "engine": self.engine,
                                  "device": self.device, "cache_dir": self.cache_dir}
        if self.source is None:
            return MnistTrialConfig(model_size=self.model_size, init=self.init, ttt_lr=self.ttt_lr,
                                    ttt_steps=self.ttt_steps, ttt_k=self.ttt_k, data_dir=self.data_dir, **common)
        ttt = self.ttt_config()
        return EmbeddingHeadConfig(source=self.source, hidden=None, ttt_k=ttt.k, ttt_lr=ttt.lr, ttt_steps=ttt.steps,
                                   majority_k=0, **common)


def global_model(cfg: LocalVsGlobalConfig, images: ImageSplits | None, splits: FeatureSplits | None,
                 on_epoch: Callable[[int, float], None] | None = None,
                 seconds: dict[str, float] | None = None) -> tuple[FeatureSplits, np.ndarray, np.ndarray, str]:
    """(features, head weight (C, d), head bias (C,), dataset name) of the trial's trained global model;
    `on_epoch` and `seconds` as in mnist_features / head_features."""
    model = cfg.model_config()
    if isinstance(model, EmbeddingHeadConfig):
        feats, weight, bias = head_features(model, splits, on_epoch, seconds)
        return feats, weight, bias, model.source.name
    feats, weight, bias = mnist_features(model, images, on_epoch, seconds)
    return feats, weight, bias, "mnist"


@register_trial("local_vs_global", LocalVsGlobalConfig)
def local_vs_global_trial(cfg: LocalVsGlobalConfig, images: ImageSplits | None = None,
                          splits: FeatureSplits | None = None,
                          on_epoch: Callable[[int, float], None] | None = None) -> pl.DataFrame:
    """Rows: global/accuracy, ttt/accuracy, ttt/accuracy_neighbourhood per test point, and
    ttt/accuracy_test_set per randomly chosen head (point_id = the head's test point). Their phase_seconds
    say where the time went: train and features (when not cached), index, retrieval, to_device, ttt (with the
    global head's and the neighbourhood accuracies, and the engine's first-call compilation on a GPU),
    global_heads (the chosen heads on the whole split)."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    feats, weight, bias, dataset = global_model(cfg, images, splits, on_epoch, seconds)
    ttt = cfg.ttt_config()
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    device = trial_device(cfg.device)
    phase = time.perf_counter()

    def lap(name: str) -> None:  # the phase since the last lap, the device's queued work included
        nonlocal phase
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        seconds[name], phase = now - phase, now

    retriever = build_retriever(feats.train_x, cfg.retriever, device=str(device))
    lap("index")
    neighbours = retrieve_neighbours(retriever, x[subset], ttt.k)  # (n, k), on the host
    lap("retrieval")

    def t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)

    W0, c0, train_x, train_y = t(weight), t(bias), t(feats.train_x), t(feats.train_y, torch.int64)
    lap("to_device")  # the training features and head copied to the TTT's device
    engine_name = resolve_head_engine(cfg.engine, device, (feats.train_x, weight))  # auto: picked for this device
    engine = HEAD_TTT_ENGINES.get(engine_name)
    chosen = np.random.default_rng(cfg.seed).choice(subset.size, size=min(cfg.global_heads, subset.size), replace=False)
    acc_global, acc_point, acc_nbhd, kept = [], [], [], {}
    for s in range(0, subset.size, cfg.chunk):
        q, labels = t(x[subset[s : s + cfg.chunk]]), t(y[subset[s : s + cfg.chunk]], torch.int64)  # (b, d), (b,)
        nb = t(neighbours[s : s + cfg.chunk], torch.int64)  # (b, k)
        logits, W, c = engine(W0, c0, train_x[nb], train_y[nb], q, ttt, return_heads=True)
        acc_global.append(((q @ W0.T + c0).argmax(1) == labels).double())
        acc_point.append((logits.argmax(1) == labels).double())
        acc_nbhd.append(heads_accuracy(W, c, train_x[nb], train_y[nb]))
        for i in chosen[(chosen >= s) & (chosen < s + cfg.chunk)]:
            kept[int(i)] = (W[i - s], c[i - s])
    acc = {name: torch.cat(v).cpu().numpy() for name, v in
           (("global", acc_global), ("point", acc_point), ("neighbourhood", acc_nbhd))}
    lap("ttt")
    order = sorted(kept)
    acc_heads = None
    if order:
        X, Y = t(x), t(y, torch.int64)  # the whole split
        acc_heads = torch.cat([heads_accuracy(kept[i][0][None], kept[i][1][None], X[None], Y[None])
                               for i in order]).cpu().numpy()
        lap("global_heads")
    model_size = cfg.model_size if cfg.source is None else None
    run = RunInfo(study=cfg.study, dataset=f"{dataset}-{cfg.split}", model_size=model_size, seed=cfg.seed, k=ttt.k,
                  fraction=1.0, config_hash=config_hash(cfg), device=str(device),
                  wall_time_s=time.perf_counter() - start, phase_seconds=seconds)
    hp = {"lr": ttt.lr, "steps": ttt.steps, "k": ttt.k, "engine": engine_name}
    frames = [
        point_rows(run, "global", "accuracy", acc["global"], subset, k=None),
        point_rows(run, "ttt", "accuracy", acc["point"], subset, hparams=hp),
        point_rows(run, "ttt", "accuracy_neighbourhood", acc["neighbourhood"], subset, hparams=hp),
    ]
    if acc_heads is not None:
        frames.append(point_rows(run, "ttt", "accuracy_test_set", acc_heads, subset[order], hparams=hp))
    if cfg.source is None:  # a LeNet may come out dead (all features zero): say so in the rows
        frames.append(dead_feature_rows(run, feats.train_x, {"init": cfg.init}))
    return pl.concat(frames)
