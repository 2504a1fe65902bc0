"""On-disk cache of feature splits keyed by a config hash.

Every study that reuses a frozen feature extractor (CNN trunk, CLIP, ...) computes features once and
loads them from `<cache_dir>/<key>.npz` afterwards. Files are written atomically. `FeatureSplits`
itself lives in harness/data/feature_splits.py (data loaders return it too); it is re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from harness.data.feature_splits import FeatureSplits

__all__ = ["FeatureSplits", "cached_features"]


def cached_features(
    cache_dir: str | os.PathLike | None, key: str, compute: Callable[[], FeatureSplits]
) -> FeatureSplits:
    """Load `<cache_dir>/<key>.npz` if present, else compute, save and return. No cache_dir: compute."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        return FeatureSplits.load(path)
    splits = compute()
    splits.save(path)
    return splits
