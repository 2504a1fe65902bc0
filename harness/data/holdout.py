"""Class-balanced hold-out of an exact number of training points (ImageNet: 50,000 as validation).

The count is a study's `--holdout` option: every error names it (ConfigError), and `holdout_quotas` checks a count
against class sizes alone, so a study can refuse it before encoding or loading anything large.
"""

from __future__ import annotations

import numpy as np

from harness.errors import ConfigError

OPTION = "--holdout"  # the command-line option every study gives the count as (EmbeddingOptions.holdout)


def holdout_quotas(classes: np.ndarray, sizes: np.ndarray, count: int, rng: np.random.Generator,
                   where: str = "") -> np.ndarray:
    """Points each class (`classes`: labels or names, `sizes`: point counts) gives to the hold-out: count // C
    each, the count % C left over one each to classes drawn from `rng` (so class counts differ by at most one).
    (C,) int64.

    Raises ConfigError naming --holdout unless 0 < count < n and every class keeps at least one training point.
    `where` names the data in the message (a file or folder)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n, at = int(sizes.sum()), f" in {where}" if where else ""
    if not 0 < count < n:
        raise ConfigError(f"{OPTION} {count}: holdout count must be in (0, {n}) for {n} training points{at}")
    per_class = np.full(sizes.size, count // sizes.size, dtype=np.int64)
    per_class[rng.choice(sizes.size, size=count % sizes.size, replace=False)] += 1
    short = per_class >= sizes  # the hold-out would leave the class no training point
    if short.any():
        c = int(np.flatnonzero(short)[0])
        fits = sizes.size * (int(sizes.min()) - 1)  # every class keeps a point whatever the draw
        hint = (f"use {OPTION} <= {fits}" if fits >= 1 else
                f"class {classes[int(sizes.argmin())]} has a single point: it can give none to a hold-out")
        raise ConfigError(f"{OPTION} {count}: class {classes[c]} has {sizes[c]} points{at}, fewer than the "
                          f"{per_class[c] + 1} it needs to give {per_class[c]} to the hold-out and keep one for "
                          f"training; {hint}")
    return per_class


def class_balanced_holdout(labels: np.ndarray, count: int, seed: int = 0,
                           where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout): sorted index arrays splitting range(n); holdout has exactly `count` points.

    Each of the C classes gives count // C points; the count % C left over go one each to randomly
    chosen classes (seeded), so class counts in the hold-out differ by at most one. Every class keeps at least
    one training point; a count that cannot do so raises ConfigError naming --holdout (`holdout_quotas`).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    per_class = holdout_quotas(classes, sizes, count, rng, where)
    held = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=m, replace=False)
                           for c, m in zip(classes, per_class, strict=True)])
    mask = np.zeros(labels.size, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
