"""Train / val / test features and labels of one dataset (`FeatureSplits`), saved and loaded atomically.

Every loader of precomputed embeddings (harness/data/embeddings.py) and every feature extractor
(harness/features/) returns one; harness/features/cache.py keys them on disk by a config hash.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.results.atomic import atomic_path

SPLITS = ("train", "val", "test")


def nonfinite_rows(x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Indices of the rows of x (n, d) holding a NaN or an inf, ascending. (m,) int64.

    Checked `chunk` rows at a time, so a memory-mapped file is read once without an (n, d) mask."""
    if x.dtype.kind not in "fc":  # integers are always finite
        return np.zeros(0, np.int64)
    bad = [np.flatnonzero(~np.isfinite(x[i:i + chunk]).all(axis=1)) + i for i in range(0, x.shape[0], chunk)]
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)


def describe_rows(rows: np.ndarray, shown: int = 5) -> str:
    """'3 row(s) (rows 2, 7, 9)', the first `shown` of them named."""
    head = ", ".join(str(int(r)) for r in rows[:shown])
    return f"{rows.size} row(s) (rows {head}{', ...' if rows.size > shown else ''})"


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
        for split in SPLITS:
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim != 2 or y.shape != (x.shape[0],):
                raise ValueError(f"{split} features {x.shape} and labels {y.shape} disagree (need (n, d) and (n,))")
            dims.add(x.shape[1])
        if len(dims) != 1:
            raise ValueError(f"feature dimensions differ between splits: {sorted(dims)}")

    def nonfinite(self) -> dict[str, np.ndarray]:
        """Split -> indices of its feature rows holding NaN or inf (splits without any left out)."""
        rows = {split: nonfinite_rows(getattr(self, f"{split}_x")) for split in SPLITS}
        return {split: r for split, r in rows.items() if r.size}

    def check_finite(self, what: str) -> None:
        """Raise ConfigError naming `what` (a cache key or file) and each split with NaN or inf features."""
        bad = self.nonfinite()
        if bad:
            where = "; ".join(f"{split} split: {describe_rows(rows)}" for split, rows in bad.items())
            raise ConfigError(f"{what}: non-finite features (NaN or inf) in {where}; refusing to use or cache them "
                              "(check the input embeddings, or a diverged training run)")

    def save(self, path: str | os.PathLike, **extra: np.ndarray) -> None:
        """Write atomically to `path` (.npz), with the `extra` arrays beside the splits in the same file; refused
        (ConfigError naming the file) for non-finite features."""
        self.check_finite(str(path))
        with atomic_path(path, suffix=".tmp.npz") as tmp:
            arrays: dict[str, Any] = {**dataclasses.asdict(self), **extra}
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSplits:
        """The splits `save` wrote to `path` (extra arrays left in the file)."""
        with np.load(path) as f:
            return cls.from_npz(f)

    @classmethod
    def from_npz(cls, f: Any) -> FeatureSplits:
        """The splits in an open .npz `save` wrote (np.load's NpzFile)."""
        return cls(**{field.name: f[field.name] for field in dataclasses.fields(cls)})
