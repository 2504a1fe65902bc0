"""On-disk cache of feature splits keyed by a config hash.

Every study that reuses a frozen feature extractor (CNN trunk, CLIP, ...) computes features once and
loads them from `<cache_dir>/<key>.npz` afterwards. Files are written atomically, and only finite ones:
features holding NaN or inf are refused before they are written (a ConfigError naming the key and the
split), and a cached file holding them (written before this check existed) is recomputed, not used. `FeatureSplits`
itself lives in harness/data/feature_splits.py (data loaders return it too); it is re-exported here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from harness.data.feature_splits import FeatureSplits

__all__ = ["FeatureSplits", "cached_features", "cached_model_features"]


def cached_features(
    cache_dir: str | os.PathLike | None, key: str, compute: Callable[[], FeatureSplits]
) -> FeatureSplits:
    """Load `<cache_dir>/<key>.npz` if present (and finite), else compute, save and return. No cache_dir: compute.

    Raises ConfigError naming `key` and the split when the computed features hold NaN or inf (nothing is written)."""
    if cache_dir is None:
        splits = compute()
        splits.check_finite(f"features {key}")
        return splits
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        cached = FeatureSplits.load(path)
        if not cached.nonfinite():
            return cached
    splits = compute()
    splits.check_finite(f"features {key} (cache {path})")
    splits.save(path)
    return splits


def cached_model_features(
    cache_dir: str | os.PathLike | None, key: str, train: Callable[[Path | None], nn.Module],
    features: Callable[[nn.Module], FeatureSplits], seconds: dict[str, float] | None = None,
) -> tuple[FeatureSplits, np.ndarray, np.ndarray]:
    """cached_features for a trained model: (its features, its head's weight (C, d), bias (C,)).

    On a miss `train(checkpoint)` trains the model, whose `head` is its last linear layer, and `features(model)`
    computes its feature splits. With a cache_dir, the features and the head are written to `<key>.npz` as one
    file (atomically, so concurrent trials of one key never leave one's head beside another's features), and
    `checkpoint` is `<key>.train.pt` for train_classifier's per-epoch checkpoint (a training killed part way
    resumes from its last epoch), removed once the features are cached. `seconds` receives the wall time of
    training ("train", with the loading of data the caller did not pass) and of computing the features
    ("features") when they run."""

    def compute(checkpoint: Path | None) -> tuple[FeatureSplits, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        model = train(checkpoint)
        w, b = (p.detach().cpu().numpy() for p in (model.head.weight, model.head.bias))  # synchronises
        trained = time.perf_counter()
        splits = features(model)
        if seconds is not None:
            seconds.update(train=trained - start, features=time.perf_counter() - trained)
        return splits, w, b

    if cache_dir is None:
        splits, w, b = compute(None)
        splits.check_finite(f"features {key}")
        return splits, w, b
    path, checkpoint = Path(cache_dir) / f"{key}.npz", Path(cache_dir) / f"{key}.train.pt"
    if path.exists():
        with np.load(path) as f:
            if {"head_w", "head_b"} <= set(f.files):  # a file without its head is not a hit
                cached, head = FeatureSplits.from_npz(f), (f["head_w"], f["head_b"])
                if not cached.nonfinite():
                    return cached, *head
    splits, w, b = compute(checkpoint)
    splits.check_finite(f"features {key} (cache {path})")
    splits.save(path, head_w=w, head_b=b)
    checkpoint.unlink(missing_ok=True)  # the features and head are cached: the training is safe
    return splits, w, b
