"""On-disk cache of feature splits keyed by a config hash.

Every study that reuses a frozen feature extractor (CNN trunk, CLIP, ...) computes features once and
loads them from `<cache_dir>/<key>.npz` afterwards. Files are written atomically, and only finite ones:
features holding NaN or inf are refused before they are written (a ConfigError naming the key and the
split), and a cached file holding them (written before this check existed) is recomputed, not used. `FeatureSplits`
itself lives in harness/data/feature_splits.py (data loaders return it too); it is re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

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
    cache_dir: str | os.PathLike | None, key: str,
    compute: Callable[[], tuple[FeatureSplits, np.ndarray, np.ndarray]],
) -> tuple[FeatureSplits, np.ndarray, np.ndarray]:
    """cached_features for a trained model: (its features, its head's weight (C, d), bias (C,)), the head kept in
    `<cache_dir>/<key>.head.npz`. The head is written before the features and features found without their head
    are recomputed, so a run killed between the two writes costs a recomputation, never a rerun that fails."""
    head: dict[str, np.ndarray] = {}
    head_path = None if cache_dir is None else Path(cache_dir) / f"{key}.head.npz"

    def features() -> FeatureSplits:
        splits, head["w"], head["b"] = compute()
        if head_path is not None:
            with atomic_path(head_path, suffix=".tmp.npz") as tmp:
                np.savez(tmp, w=head["w"], b=head["b"])
        return splits

    if head_path is not None and not head_path.exists():
        (Path(head_path.parent) / f"{key}.npz").unlink(missing_ok=True)  # features without their head: no hit
    splits = cached_features(cache_dir, key, features)
    if not head:  # the features came from the cache: so does the head
        assert head_path is not None  # without a cache, cached_features computes (and fills head)
        with np.load(head_path) as f:
            head = {"w": f["w"], "b": f["b"]}
    return splits, head["w"], head["b"]
