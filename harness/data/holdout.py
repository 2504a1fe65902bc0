"""Class-balanced hold-out of an exact number of training points (ImageNet: 50,000 as validation)."""

from __future__ import annotations

import numpy as np


def class_balanced_holdout(labels: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout): sorted index arrays splitting range(n); holdout has exactly `count` points.

    Each of the C classes gives count // C points; the count % C left over go one each to randomly
    chosen classes (seeded), so class counts in the hold-out differ by at most one.
    """
    labels = np.asarray(labels)
    n = labels.size
    if not 0 < count < n:
        raise ValueError(f"holdout count must be in (0, {n}) for {n} training points, got {count}")
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    per_class = np.full(classes.size, count // classes.size)
    per_class[rng.choice(classes.size, size=count % classes.size, replace=False)] += 1
    short = per_class > sizes
    if short.any():
        c = int(np.flatnonzero(short)[0])
        raise ValueError(f"class {classes[c]} has {sizes[c]} points, fewer than the {per_class[c]} the hold-out needs")
    held = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=m, replace=False)
                           for c, m in zip(classes, per_class, strict=True)])
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
