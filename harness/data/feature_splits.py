"""Train / val / test features and labels of one dataset (`FeatureSplits`), saved and loaded atomically.

Every loader of precomputed embeddings (harness/data/embeddings.py) and every feature extractor
(harness/features/) returns one; harness/features/cache.py keys them on disk by a config hash.
"""

from __future__ import annotations

import dataclasses
import os

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
