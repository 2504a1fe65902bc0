"""S7 (paper Table 2): is a TTT head good locally or globally? For each test point x* of a LeNet's
features: accuracy of the global head, of x*'s TTT head on x*, of x*'s TTT head on its own training
neighbourhood (the k points it was fitted on), and of `global_heads` randomly chosen TTT heads on the
whole test split."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl
import torch

from harness.data.mnist import ImageSplits
from harness.errors import ConfigError
from harness.models.lenet import lenet_for_size
from harness.registry import register_trial
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.index import build_retriever, retrieve_neighbours
from harness.trials.mnist import (
    MnistTrialConfig,
    check_device,
    check_engine,
    mnist_features,
    mnist_input_files,
    test_subset,
)
from harness.trials.options import Device, HeadEngine, Split
from harness.ttt.head_engines import HEAD_TTT_ENGINES, resolve_head_engine
from harness.ttt.linear import HeadTTTConfig
from harness.ttt.local import heads_accuracy

PAPER_TABLE2 = {  # accuracy in percent: global, TTT on test sample, TTT on neighbourhood, global TTT
    "mnist": (98.57, 99.01, 100.00, 36.38),
    "imagenet": (78.33, 79.39, 95.19, 77.04),
}


@dataclasses.dataclass(frozen=True)
class LocalVsGlobalConfig:
    """None means the LeNet size's Table 3 / Table 4 value."""

    model_size: int = 1268
    seed: int = 0
    epochs: int | None = None
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
        self.features_config()  # validates the shared fields

    def input_files(self) -> tuple[str, ...]:
        return mnist_input_files(self.data_dir)

    def check_inputs(self, images: ImageSplits | None = None, **_: object) -> None:
        """The checks of the S1 trial this shares its CNN with (k and test points fit, the engine runs here)."""
        dataclasses.replace(self.features_config(), engine=self.engine, device=self.device).check_inputs(images)

    def features_config(self) -> MnistTrialConfig:
        """The S1 trial this shares its CNN with (same cache key) and whose Table 4 values fill the Nones."""
        return MnistTrialConfig(model_size=self.model_size, seed=self.seed, epochs=self.epochs,
                                test_points=self.test_points, ttt_lr=self.ttt_lr, ttt_steps=self.ttt_steps,
                                ttt_k=self.ttt_k, split=self.split, data_dir=self.data_dir, cache_dir=self.cache_dir)


@register_trial("local_vs_global", LocalVsGlobalConfig)
def local_vs_global_trial(cfg: LocalVsGlobalConfig, images: ImageSplits | None = None) -> pl.DataFrame:
    """Rows: global/accuracy, ttt/accuracy, ttt/accuracy_neighbourhood per test point, and
    ttt/accuracy_test_set per randomly chosen head (point_id = the head's test point)."""
    start = time.perf_counter()
    mcfg = cfg.features_config().resolved()
    assert mcfg.ttt_lr is not None and mcfg.ttt_steps is not None and mcfg.ttt_k is not None  # resolved() fills them
    feats, weight, bias = mnist_features(mcfg, images)
    ttt = HeadTTTConfig(lr=mcfg.ttt_lr, steps=mcfg.ttt_steps, k=mcfg.ttt_k)
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    neighbours = retrieve_neighbours(build_retriever(feats.train_x, cfg.retriever), x[subset], ttt.k)  # (n, k)

    def t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)

    W0, c0, train_x, train_y = t(weight), t(bias), t(feats.train_x), t(feats.train_y, torch.int64)
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
    order = sorted(kept)
    if order:
        Wh, ch = torch.stack([kept[i][0] for i in order]), torch.stack([kept[i][1] for i in order])
        X, Y = t(x), t(y, torch.int64)  # the whole split
        acc_heads = heads_accuracy(Wh, ch, X.expand(len(order), *X.shape), Y.expand(len(order), Y.shape[0]))
    run = RunInfo(study=cfg.study, dataset=f"mnist-{cfg.split}", model_size=cfg.model_size, seed=cfg.seed, k=ttt.k,
                  fraction=1.0, config_hash=config_hash(cfg), device=str(device),
                  wall_time_s=time.perf_counter() - start)
    hp = {"lr": ttt.lr, "steps": ttt.steps, "k": ttt.k, "engine": engine_name}
    frames = [
        point_rows(run, "global", "accuracy", torch.cat(acc_global).cpu().numpy(), subset, k=None),
        point_rows(run, "ttt", "accuracy", torch.cat(acc_point).cpu().numpy(), subset, hparams=hp),
        point_rows(run, "ttt", "accuracy_neighbourhood", torch.cat(acc_nbhd).cpu().numpy(), subset, hparams=hp),
    ]
    if order:
        frames.append(point_rows(run, "ttt", "accuracy_test_set", acc_heads.cpu().numpy(), subset[order], hparams=hp))
    return pl.concat(frames)
