"""Non-parametric baseline: majority vote over the retrieved neighbours' labels."""

from __future__ import annotations

import torch


def majority_vote(neighbour_labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Most frequent label per row of (B, k) labels, nearest first -> (B,) int64.

    Ties go to the tied class that occurs first (i.e. has the nearest neighbour).
    """
    B, k = neighbour_labels.shape
    counts = torch.zeros(B, classes, dtype=torch.float64, device=neighbour_labels.device)
    counts.scatter_add_(1, neighbour_labels, torch.ones(B, k, dtype=torch.float64, device=neighbour_labels.device))
    rank = torch.arange(k, 0, -1, dtype=torch.float64, device=neighbour_labels.device).expand(B, k)  # k .. 1
    first = torch.zeros(B, classes, dtype=torch.float64, device=neighbour_labels.device)
    first.scatter_reduce_(1, neighbour_labels, rank, reduce="amax")  # larger = nearer first occurrence
    return (counts + first / (k + 1)).argmax(dim=1)
