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

from harness.data.feature_splits import FeatureSplits

__all__ = ["FeatureSplits", "cached_features"]


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
