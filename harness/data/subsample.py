"""Class-balanced subsampling of a training set (S4's dataset-fraction axis)."""

from __future__ import annotations

import numpy as np

from harness.errors import ConfigError


def class_balanced_subsample(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced random subset holding `fraction` of the points.

    Each of the C classes contributes round(fraction * n / C) points, or all it has when it has fewer (the
    paper's `split_dataset` caps the same way and reports the actual scale): the subset can then be smaller
    than C * round(fraction * n / C), and the trials record its size (`train_points`) beside the fraction.
    fraction must be in (0, 1]; fraction == 1 returns every index. Raises ConfigError for a fraction whose
    share per class rounds to 0 points, naming the smallest fraction that gives one point per class (C / n).
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(labels.size)
    classes, sizes = np.unique(labels, return_counts=True)
    share = fraction * labels.size / classes.size  # points per class the fraction asks for
    per_class = int(round(share))
    if per_class < 1:
        raise ConfigError(
            f"fraction {fraction:g} of {labels.size} training points in {classes.size} classes is {share:.3g} points "
            f"per class, which rounds to 0: a class-balanced subset needs at least one point per class; use a "
            f"fraction of at least {classes.size / labels.size:.3g} (one point per class)")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int(m)), replace=False)
              for c, m in zip(classes, sizes, strict=True)]
    return np.sort(np.concatenate(chosen))
