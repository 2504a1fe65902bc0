"""Least-squares heads for the S11 theory check (paper §5, §C.3): global vs local (TTT) fits.

Both are minimum-norm least-squares solutions, the estimators the paper analyses:
  global:  v = argmin_v ||y - Ψ v||²  over all N training points        Ψ (N, d2)
  TTT:     v_b = argmin_v ||y_b - X_b v||² over the k neighbours of x*_b  X_b (k, d2), batched over b
"""

from __future__ import annotations

import torch


def global_least_squares(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Min-norm least-squares weights (d2,) for features (N, d2), targets (N,). Float64 inside."""
    return torch.linalg.pinv(features.double()) @ targets.double()


def local_least_squares(neighbour_features: torch.Tensor, neighbour_targets: torch.Tensor,
                        queries: torch.Tensor) -> torch.Tensor:
    """Predictions (B,) of per-point min-norm least squares: X (B, k, d2), y (B, k), queries (B, d2)."""
    v = torch.linalg.pinv(neighbour_features.double()) @ neighbour_targets.double().unsqueeze(-1)  # (B, d2, 1)
    return (queries.double().unsqueeze(1) @ v).reshape(-1)
