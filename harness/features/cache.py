"""Feature splits (train / val / test features and labels) and an on-disk cache keyed by a config hash.

Every study that reuses a frozen feature extractor (CNN trunk, CLIP, ...) computes features once and
loads them from `<cache_dir>/<key>.npz` afterwards. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.results.atomic import atomic_path


@dataclasses.dataclass(frozen=True)
class FeatureSplits:
    """Features (n, d) float32 and labels (n,) int64 of each split."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def __post_init__(self) -> None:
        dims = set()
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim != 2 or y.shape != (x.shape[0],):
                raise ValueError(f"{split} features {x.shape} and labels {y.shape} disagree (need (n, d) and (n,))")
            dims.add(x.shape[1])
        if len(dims) != 1:
            raise ValueError(f"feature dimensions differ between splits: {sorted(dims)}")

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSplits:
        with np.load(path) as f:
            return cls(**{name: f[name] for name in f.files})


def cached_features(cache_dir: str | os.PathLike | None, key: str, compute: Callable[[], FeatureSplits]) -> FeatureSplits:
    """Load `<cache_dir>/<key>.npz` if present, else compute, save and return. No cache_dir: compute."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        return FeatureSplits.load(path)
    splits = compute()
    splits.save(path)
    return splits
