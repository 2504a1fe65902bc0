"""Heads on frozen embeddings (paper §E.6): the 2-layer MLPs of Table 7 and the plain linear head.

MLP: x (n, d_in) -> Linear(d_in, h) -> ReLU -> Dropout(p) -> Linear(h, C). TTT fine-tunes only the
last Linear over the frozen hidden features `features(x)` (after the ReLU, before dropout, which is
the identity at evaluation), so it runs through the linear-head engine unchanged. hidden = None gives
the linear head on the embeddings themselves (features(x) = x), ImageNet's 78.33 % baseline.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from harness.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """Global training (Adam, cross-entropy) and architecture of one head; hidden None = linear."""

    hidden: int | None
    lr: float
    batch_size: int
    epochs: int
    dropout: float
    weight_decay: float = 0.0

    def params(self, in_dim: int = 512, classes: int = 1000) -> int:
        """Weights + biases (Table 7's 'model parameters' for d_in = 512, C = 1000)."""
        if self.hidden is None:
            return in_dim * classes + classes
        return in_dim * self.hidden + self.hidden + self.hidden * classes + classes


# Table 7 (hidden -> lr, batch, epochs, dropout); weight decay 0 everywhere.
MLP_SPECS: dict[int, HeadSpec] = {
    hidden: HeadSpec(hidden, lr, batch_size, epochs, dropout)
    for hidden, lr, batch_size, epochs, dropout in (
        (250, 4.0e-4, 450, 50, 0.05),
        (500, 3.5e-4, 350, 50, 0.25),
        (750, 3.0e-4, 300, 50, 0.3),
        (1000, 4.0e-4, 450, 50, 0.35),
        (1250, 3.5e-4, 350, 50, 0.45),
        (1500, 4.0e-4, 300, 50, 0.55),
        (2000, 4.0e-4, 400, 50, 0.6),
        (2500, 3.5e-4, 450, 50, 0.65),
        (3000, 4.5e-4, 450, 50, 0.7),
        (4000, 4.5e-4, 650, 50, 0.7),
    )
}
LINEAR_HEAD = HeadSpec(None, 1e-3, 250, 50, 0.0)  # §E.6 baseline linear classifier on CLIP embeddings


def head_spec(hidden: int | None) -> HeadSpec:
    """Table 7's spec for `hidden` (None: the linear head); a clear error lists the valid sizes."""
    if hidden is None:
        return LINEAR_HEAD
    try:
        return MLP_SPECS[hidden]
    except KeyError:
        raise ConfigError(f"hidden = {hidden} is not a Table 7 size; choose from {sorted(MLP_SPECS)} "
                         "(or None for the linear head)") from None


class MlpHead(nn.Module):
    """trunk: (n, d_in) -> (n, h) hidden features after ReLU (identity when hidden is None);
    head: Linear (n, h) -> (n, C) logits, with dropout p in front of it during training."""

    def __init__(self, in_dim: int, classes: int, hidden: int | None, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.trunk = nn.Identity() if hidden is None else nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_dim if hidden is None else hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.trunk(x)))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """Frozen hidden features (n, h) float32 (after ReLU); the input the TTT head sees."""
        self.eval()
        return torch.cat([self.trunk(x[i : i + batch_size].float()) for i in range(0, x.shape[0], batch_size)])
