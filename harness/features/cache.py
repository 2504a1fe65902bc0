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
from harness.results.atomic import atomic_path

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
    computes its feature splits. With a cache_dir, `checkpoint` is the file `<key>.train.pt` for
    train_classifier's per-epoch checkpoint (a training killed part way resumes from its last epoch), removed
    once the features are cached; the head is kept in `<key>.head.npz`, written before the features, and
    features found without their head are recomputed, so a run killed between the two writes costs a
    recomputation, never a rerun that fails. `seconds` receives the wall time of training ("train") and of
    computing the features ("features") when they run."""
    head: dict[str, np.ndarray] = {}
    folder = None if cache_dir is None else Path(cache_dir)
    head_path = None if folder is None else folder / f"{key}.head.npz"
    checkpoint = None if folder is None else folder / f"{key}.train.pt"

    def compute() -> FeatureSplits:
        start = time.perf_counter()
        model = train(checkpoint)
        head["w"], head["b"] = (p.detach().cpu().numpy() for p in (model.head.weight, model.head.bias))  # syncs
        trained = time.perf_counter()
        splits = features(model)
        if seconds is not None:
            seconds.update(train=trained - start, features=time.perf_counter() - trained)
        if head_path is not None:
            with atomic_path(head_path, suffix=".tmp.npz") as tmp:
                np.savez(tmp, w=head["w"], b=head["b"])
        return splits

    if folder is not None and head_path is not None and not head_path.exists():
        (folder / f"{key}.npz").unlink(missing_ok=True)  # features without their head: not a hit
    splits = cached_features(cache_dir, key, compute)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the features and head are cached: the training is safe
    if not head:  # the features came from the cache: so does the head
        assert head_path is not None  # without a cache, cached_features computes (and fills head)
        with np.load(head_path) as f:
            head = {"w": f["w"], "b": f["b"]}
    return splits, head["w"], head["b"]
