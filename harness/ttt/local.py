"""Where a TTT head is good (paper Table 2): accuracy of adapted heads on chosen sets of points."""

from __future__ import annotations

import torch


def heads_accuracy(W: torch.Tensor, c: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy (B,) of head b (W (B, C, d), c (B, C)) on its own points feats[b] (B, m, d), labels[b] (B, m).

    With feats[b] = point b's k neighbours this is Table 2's "TTT on neighbourhood"; with every b
    given the whole test set (expand) it is "global TTT".
    """
    logits = torch.baddbmm(c.unsqueeze(1), feats, W.transpose(1, 2))  # (B, m, C)
    return (logits.argmax(-1) == labels).double().mean(1)
