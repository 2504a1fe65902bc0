"""Per-point metrics and bootstrap confidence intervals (pure numpy/torch functions)."""

from __future__ import annotations

import numpy as np
import torch


def error_rate(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-point 0/1 error. logits (n, C), labels (n,) -> (n,) float in {0, 1}."""
    return (logits.argmax(dim=-1) != labels).float()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-point cross-entropy in nats. logits (n, C), labels (n,) -> (n,)."""
    return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")


def bootstrap_means(values: np.ndarray, groups: np.ndarray | None = None, resamples: int = 1000,
                    seed: int = 0) -> np.ndarray:
    """Bootstrap resampled means (R,) of per-point values (n,).

    groups: optional (n,) group id (e.g. seed); then points are resampled *within* each group,
    `resamples // n_groups` draws per group, and the per-group resampled means are pooled: the paper's
    "5 seeds x 200 resamples" scheme for S1 (1000 in all)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D array of values, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.zeros(values.size, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != values.shape:
        raise ValueError(f"groups shape {groups.shape} differs from values shape {values.shape}")
    unique = np.unique(groups)
    per_group = max(1, resamples // unique.size)
    means = []
    for g in unique:
        v = values[groups == g]
        draws = rng.integers(0, v.size, size=(per_group, v.size))  # (R, n_g)
        means.append(v[draws].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(
    values: np.ndarray,
    groups: np.ndarray | None = None,
    resamples: int = 1000,
    level: float = 0.90,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap CI of per-point values (see bootstrap_means). Returns (mean, low, high)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    pooled = bootstrap_means(values, groups, resamples, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(pooled, [alpha, 1.0 - alpha])
    return float(np.mean(values)), float(low), float(high)


def bootstrap_se(values: np.ndarray, groups: np.ndarray | None = None, resamples: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of the mean: the standard deviation of the resampled means (the paper's
    Tables 1 and 2 report accuracy ± this). The same resamples as bootstrap_ci with the same seed."""
    return float(np.std(bootstrap_means(values, groups, resamples, seed), ddof=1))
