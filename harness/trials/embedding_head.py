"""S2 / S4-embeddings / S5 / S10: a head (2-layer MLP of Table 7, or linear) trained globally on frozen
embeddings, then global vs TTT of its last layer (Table 8) vs majority vote on a fixed set of test points.

Neighbours are retrieved in the head's input space (the MLP's hidden features after ReLU; the embeddings
themselves for the linear head), from the (class-balanced, `fraction`) training subsample only.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from harness.data.embeddings import IMAGENET_HOLDOUT, labels_path_for
from harness.data.subsample import class_balanced_subsample
from harness.devices import trial_device
from harness.distributed.sharding import ShardingConfig
from harness.errors import ConfigError
from harness.features.cache import FeatureSplits, cached_model_features
from harness.features.embedding_source import EmbeddingSource
from harness.models.mlp import MlpHead, head_spec
from harness.models.training import TrainConfig, train_classifier
from harness.registry import register_trial
from harness.results.provenance import code_version, input_fingerprint
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.trials.mnist import (
    check_device,
    check_engine,
    check_engine_on_device,
    check_neighbourhoods,
    check_seed,
    check_test_points,
    check_ttt_options,
    evaluate_in_process,
    mnist_input_files,
    refuse_unused_options,
    test_subset,
)
from harness.trials.options import Device, HeadEngine, Split
from harness.ttt.evaluator import HeadState, prediction_metrics
from harness.ttt.linear import HeadTTTConfig


def source_input_files(source: EmbeddingSource) -> tuple[str, ...]:
    """The files an embedding source reads (embedding and label files, image folders, MNIST)."""
    if source.kind == "mnist-pixels":
        return mnist_input_files(source.data_dir)
    files = [source.train, source.test, source.train_labels, source.test_labels]
    if source.kind == "file":
        files += [str(labels_path_for(Path(p))) for p in (source.train, source.test)
                  if p and Path(p).suffix == ".npy" and not (source.train_labels or source.test_labels)]
    return tuple(str(Path(f).resolve()) for f in files if f)


@dataclasses.dataclass(frozen=True)
class EmbeddingOptions:
    """Where a study's embeddings come from (the command-line face of EmbeddingSource)."""

    embeddings: tuple[str, str] | None = None  # TRAIN TEST: .npy + <stem>.labels.npy, or .parquet (None: MNIST pixels)
    image_folder: tuple[str, str] | None = None  # TRAIN TEST ImageFolder roots (e.g. ImageNet train/ val/) to encode
    clip_arch: str = "ViT-B-32"  # open_clip architecture for --image-folder
    clip_pretrained: str | None = "openai"  # open_clip pretrained tag for --image-folder (None: random weights)
    holdout: int = IMAGENET_HOLDOUT  # class-balanced validation images held out of train (§E.6)

    def __post_init__(self) -> None:
        if self.embeddings and self.image_folder:
            raise ConfigError("give --embeddings or --image-folder, not both")
        if self.embeddings:  # encoded already: the open_clip model encodes image folders only
            refuse_unused_options(self, ("clip_arch", "clip_pretrained"),
                                  "with --embeddings (encoded already): --clip-arch / --clip-pretrained "
                                  "apply to --image-folder")
        elif not self.image_folder:
            refuse_unused_options(self, ("clip_arch", "clip_pretrained", "holdout"),
                                  "without --embeddings / --image-folder (the study runs on its own data, MNIST or "
                                  "synthetic, with its own validation split): --clip-arch / --clip-pretrained "
                                  "apply to --image-folder, --holdout to --embeddings and --image-folder")

    def source(self, cache_dir: str) -> EmbeddingSource:
        """The EmbeddingSource these options name; CLIP embeddings of image folders are cached in cache_dir."""
        if self.image_folder:
            return EmbeddingSource("image-folder", *self.image_folder, holdout=self.holdout, arch=self.clip_arch,
                                   pretrained=self.clip_pretrained, cache_dir=str(Path(cache_dir).resolve()))
        if self.embeddings:
            train, test = (str(Path(p).resolve()) for p in self.embeddings)  # trials run in their own folder
            return EmbeddingSource("file", train, test, holdout=self.holdout)
        return EmbeddingSource("mnist-pixels")


@dataclasses.dataclass(frozen=True)
class EmbeddingHeadConfig:
    """One (head, seed, fraction, k) cell. Defaults: Table 8's TTT of the MLP heads, majority k = 10."""

    source: EmbeddingSource = EmbeddingSource()
    hidden: int | None = 250  # Table 7 hidden size; None: the linear head on the embeddings
    seed: int = 0
    epochs: int | None = None  # global training epochs (None: Table 7's 50)
    fraction: float = 1.0  # class-balanced fraction of train for training and retrieval (S4)
    ttt_k: int = 100
    ttt_lr: float = 5e-3
    ttt_steps: int = 50
    majority_k: int = 10  # 0 skips majority vote
    test_points: int | None = None
    split: Split = "test"
    retriever: str = "faiss"
    engine: HeadEngine = "auto"  # head-TTT engine (harness.ttt.head_engines: auto picks per device)
    device: Device | None = None
    cache_dir: str | None = None  # caches the trained head and its features per (source, head, seed, fraction)
    study: str = "mlp_scaling"  # the study named in the rows

    def __post_init__(self) -> None:
        head_spec(self.hidden)  # raises naming Table 7's sizes
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.epochs is not None and self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.majority_k < 0:
            raise ConfigError(f"majority_k must be >= 0, got {self.majority_k}")
        if self.test_points is not None and self.test_points < 1:
            raise ConfigError(f"test_points must be >= 1, got {self.test_points}")
        if self.split not in ("test", "val"):
            raise ConfigError(f"split must be 'test' or 'val', got {self.split!r}")
        check_engine(self.engine)
        check_device(self.device)
        check_seed(self.seed)
        check_ttt_options(self)

    def input_files(self) -> tuple[str, ...]:
        return source_input_files(self.source)

    def check_inputs(self, splits: FeatureSplits | None = None, **_: object) -> None:
        """Checks against the embeddings, run by the study before any work: k and test points fit, the engine
        can run here."""
        splits = splits if splits is not None else self.source.load()
        n = class_balanced_subsample(splits.train_y, self.fraction, seed=self.seed).size
        check_neighbourhoods({"ttt_k": (self.ttt_k, ""), "majority_k": (self.majority_k, "")}, n,
                             f"fraction {self.fraction} of the {splits.train_y.size} training embeddings")
        check_test_points(self.test_points, (splits.test_y if self.split == "test" else splits.val_y).size,
                          self.split)
        check_engine_on_device(self.engine, self.device)

    def ttt_config(self) -> HeadTTTConfig:
        return HeadTTTConfig(lr=self.ttt_lr, steps=self.ttt_steps, k=self.ttt_k)

    def train_config(self) -> TrainConfig:
        spec = head_spec(self.hidden)
        return TrainConfig(spec.lr, spec.batch_size, spec.epochs if self.epochs is None else self.epochs, self.seed,
                           spec.weight_decay)


def head_features(cfg: EmbeddingHeadConfig, splits: FeatureSplits | None = None,
                  on_epoch: Callable[[int, float], None] | None = None,
                  seconds: dict[str, float] | None = None) -> tuple[FeatureSplits, np.ndarray, np.ndarray]:
    """Train the head on the `fraction` subsample; return (its input features of train-subsample / val /
    test, last-layer weight (C, d), bias (C,)). Cached under cfg.cache_dir when set, where a training killed
    part way also resumes from its last finished epoch (a checkpoint removed once the features are cached), with
    the same result. `on_epoch(epoch, loss)`
    follows the training; `seconds` receives the wall time of training ("train"; with loading the embeddings when
    `splits` is None) and of computing the features ("features") when they run (cached_model_features)."""
    key_fields = {"source": cfg.source, "hidden": cfg.hidden, "seed": cfg.seed, "train": cfg.train_config(),
                  "fraction": cfg.fraction, "inputs": input_fingerprint(cfg.input_files()),
                  "code_version": code_version()}
    device = trial_device(cfg.device)
    key_fields["train_device"] = device.type  # GPU and CPU training differ in the last bits
    key = f"head-{cfg.hidden or 'linear'}-{config_hash(key_fields)}"

    @functools.cache
    def data() -> tuple[FeatureSplits, np.ndarray]:  # the embeddings and the training subsample, on a miss only
        emb = splits if splits is not None else cfg.source.load()
        return emb, class_balanced_subsample(emb.train_y, cfg.fraction, seed=cfg.seed)

    def train(checkpoint: Path | None) -> MlpHead:
        emb, idx = data()
        classes = int(max(emb.train_y.max(), emb.test_y.max())) + 1
        torch.manual_seed(cfg.seed)
        model = MlpHead(emb.train_x.shape[1], classes, cfg.hidden, head_spec(cfg.hidden).dropout).to(device)
        x = torch.from_numpy(np.ascontiguousarray(emb.train_x[idx])).to(device)
        y = torch.from_numpy(emb.train_y[idx]).to(device)
        train_classifier(model, x, y, cfg.train_config(), on_epoch=on_epoch, checkpoint=checkpoint)
        return model

    def features(model: MlpHead) -> FeatureSplits:
        emb, idx = data()

        def feats(a: np.ndarray) -> np.ndarray:
            return model.features(torch.from_numpy(np.ascontiguousarray(a)).to(device)).cpu().numpy()

        return FeatureSplits(feats(emb.train_x[idx]), emb.train_y[idx], feats(emb.val_x), emb.val_y,
                             feats(emb.test_x), emb.test_y)

    return cached_model_features(cfg.cache_dir, key, train, features, seconds)


NEIGHBOUR_FLOATS = 2**26  # cap on the gathered neighbour features (chunk, k, d) per TTT batch: 256 MB fp32


def ttt_chunk(k: int, dim: int, cap: int = 256) -> int:
    """Test points per TTT batch so that (chunk, k, dim) stays under NEIGHBOUR_FLOATS."""
    return max(1, min(cap, NEIGHBOUR_FLOATS // (k * dim)))


def either_correct_rows(run: RunInfo, out: dict[str, np.ndarray], hparams: dict[str, dict]) -> list[pl.DataFrame]:
    """S10 (Fig 6 right): cross-entropy of global and TTT on the points either of them predicts correctly."""
    keep = (out["pred_global"] == out["label"]) | (out["pred_ttt"] == out["label"])
    return [point_rows(run, m, "cross_entropy_either_correct", out[f"ce_{m}"][keep], out["point_id"][keep],
                       hparams=hparams[m], k=None if m == "global" else run.k) for m in ("global", "ttt")]


@register_trial("embedding_head", EmbeddingHeadConfig, shardable=True)
def embedding_head_trial(cfg: EmbeddingHeadConfig, splits: FeatureSplits | None = None, *,
                         sharding: ShardingConfig | None = None,
                         on_epoch: Callable[[int, float], None] | None = None) -> pl.DataFrame:
    """Per-point rows: global / ttt / majority x error / cross_entropy, plus cross_entropy_either_correct.
    The test points are evaluated in this process, or over Ray Data actors with `sharding` (same rows)."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}  # where the trial's time goes (train, features, index, retrieval, ttt)
    feats, weight, bias = head_features(cfg, splits, on_epoch, seconds)
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    state = HeadState(feats.train_x, feats.train_y, weight, bias)
    chunk = ttt_chunk(cfg.ttt_k, x.shape[1])
    if sharding is None:
        out, device = evaluate_in_process(state, cfg.ttt_config(), x[subset], y[subset], subset,
                                          majority_k=cfg.majority_k, retriever=cfg.retriever, device=cfg.device,
                                          engine=cfg.engine, chunk=chunk, seconds=seconds)
    else:
        from harness.distributed.sharding import evaluate_sharded

        sharding = dataclasses.replace(sharding, batch_size=min(sharding.batch_size, chunk))  # one chunk per batch
        out = evaluate_sharded(state, cfg.ttt_config(), x[subset], y[subset], subset, sharding,
                               majority_k=cfg.majority_k, retriever=cfg.retriever, engine=cfg.engine)
        device = "+".join(sorted(set(out.pop("device").tolist())))
    run = RunInfo(study=cfg.study, dataset=f"{cfg.source.name}-{cfg.split}", model_size=cfg.hidden, seed=cfg.seed,
                  k=cfg.ttt_k, fraction=cfg.fraction, config_hash=config_hash(cfg), device=device,
                  wall_time_s=time.perf_counter() - start, phase_seconds=seconds or None)
    train = cfg.train_config()
    hp: dict[str, dict[str, object]] = {
        "global": {"lr": train.lr, "batch_size": train.batch_size, "epochs": train.epochs,
                   "dropout": head_spec(cfg.hidden).dropout},
        "ttt": {"lr": cfg.ttt_lr, "steps": cfg.ttt_steps, "k": cfg.ttt_k,
                "engine": "+".join(sorted(set(out.pop("engine").tolist())))},  # the engine that ran (auto resolved)
        "majority": {"k": cfg.majority_k},
    }
    frames = [point_rows(run, method, metric, values, out["point_id"], hparams=hp[method],
                         k={"global": None, "ttt": cfg.ttt_k, "majority": cfg.majority_k}[method])
              for method, metric, values in prediction_metrics(out, cfg.ttt_config())]
    return pl.concat(frames + either_correct_rows(run, out, hp))
