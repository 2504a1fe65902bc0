"""Class-balanced subsampling of a training set (S4's dataset-fraction axis)."""

from __future__ import annotations

import numpy as np


def class_balanced_subsample(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced random subset holding `fraction` of the points.

    Each class contributes round(fraction * n / C) points (capped at its size, at least 1), so
    the class histogram of the subset is as uniform as the data allows. fraction must be in (0, 1];
    fraction == 1 returns every index.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * labels.size / classes.size)))
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
        for c in classes
    ]
    return np.sort(np.concatenate(chosen))
