"""Batched test-time training of a linear head: B test points at once, exactly as B separate runs.

For each test point b with neighbour features X_b (k, d) and labels y_b (k,), start from the global
head (W, c) and take `steps` full-batch Adam steps on

    L_b(W_b, c_b) = (1/k) Σ_i CE(W_b x_bi + c_b, y_bi)

then predict W_b x*_b + c_b and discard the head. Stacking the B heads into W (B, C, d), c (B, C):

    Z   = X Wᵀ + c               (B, k, C)   one bmm
    P   = softmax(Z)             (B, k, C)
    D   = (P - onehot(y)) / k    (B, k, C)   ∂L_b/∂Z_b (the softmax-CE gradient, by hand)
    ∇W  = Dᵀ X                   (B, C, d)   one bmm
    ∇c  = Σ_i D                  (B, C)

Since L = Σ_b L_b and head b appears only in L_b, ∇W[b] = ∇L_b; Adam is element-wise, so one Adam
over the stacked tensor applies exactly the updates B separate Adams would. `head_ttt_one_point`
is the straightforward loop (nn.Linear, autograd, torch.optim.Adam); tests assert equality.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from harness.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class HeadTTTConfig:
    """Full-batch Adam on the k neighbours (paper: epochs with batch size = k, so epochs = steps)."""

    lr: float
    steps: int
    k: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        # every float finite: `not lr > 0` alone lets inf through, and Adam then turns every weight into NaN
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"HeadTTTConfig.lr must be > 0 and finite, got {self.lr}")
        if not (math.isfinite(self.eps) and self.eps > 0):  # eps = 0: a weight whose gradient stays 0 gets 0/0
            raise ConfigError(f"HeadTTTConfig.eps must be > 0 and finite, got {self.eps}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"HeadTTTConfig.weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if len(self.betas) != 2:
            raise ConfigError(f"HeadTTTConfig.betas must be two numbers, got {self.betas}")
        for i, beta in enumerate(self.betas):
            if not (math.isfinite(beta) and 0 <= beta < 1):
                raise ConfigError(f"HeadTTTConfig.betas[{i}] must be in [0, 1), got {beta}")
        if self.steps < 0:
            raise ConfigError(f"HeadTTTConfig.steps must be >= 0, got {self.steps}")
        if self.k < 1:
            raise ConfigError(f"HeadTTTConfig.k must be >= 1, got {self.k}")


def _check_shapes(weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                  query: torch.Tensor) -> None:
    C, d = weight.shape
    B, k, fd = feats.shape
    if bias.shape != (C,):
        raise ValueError(f"head bias has shape {tuple(bias.shape)}, expected ({C},)")
    if fd != d:
        raise ValueError(f"neighbour features have dimension {fd} but the head expects {d}")
    if labels.shape != (B, k):
        raise ValueError(f"neighbour labels have shape {tuple(labels.shape)}, expected ({B}, {k})")
    if query.shape != (B, d):
        raise ValueError(f"query features have shape {tuple(query.shape)}, expected ({B}, {d})")


def batched_head_ttt(
    weight: torch.Tensor,
    bias: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    cfg: HeadTTTConfig,
    return_heads: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TTT of B copies of the head, one per test point.

    weight (C, d), bias (C,): the global head. feats (B, k, d): each point's neighbour features.
    labels (B, k) int64. query (B, d): the test points' features.
    Returns logits (B, C) of each adapted head on its own test point; with return_heads also the
    adapted heads W (B, C, d), c (B, C).
    """
    _check_shapes(weight, bias, feats, labels, query)
    B, k, _ = feats.shape
    C = weight.shape[0]
    W = weight.detach().unsqueeze(0).repeat(B, 1, 1).requires_grad_(False)  # (B, C, d)
    c = bias.detach().unsqueeze(0).repeat(B, 1)  # (B, C)
    W.grad, c.grad = torch.empty_like(W), torch.empty_like(c)
    opt = torch.optim.Adam([W, c], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    onehot = nn.functional.one_hot(labels, C).to(feats.dtype)  # (B, k, C)
    for _ in range(cfg.steps):
        Z = torch.baddbmm(c.unsqueeze(1), feats, W.transpose(1, 2))  # (B, k, C)
        D = (torch.softmax(Z, dim=-1) - onehot) / k  # (B, k, C)
        torch.bmm(D.transpose(1, 2), feats, out=W.grad)  # (B, C, d)
        torch.sum(D, dim=1, out=c.grad)  # (B, C)
        opt.step()
    logits = torch.baddbmm(c.unsqueeze(1), query.unsqueeze(1), W.transpose(1, 2)).squeeze(1)  # (B, C)
    return (logits, W, c) if return_heads else logits


def head_ttt_one_point(
    weight: torch.Tensor,
    bias: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    cfg: HeadTTTConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference loop body for ONE test point: feats (k, d), labels (k,), query (d,).

    Copies the head into an nn.Linear, runs `steps` Adam steps with autograd on the mean CE.
    Returns (logits (C,), W (C, d), c (C,)).
    """
    head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device, weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    for _ in range(cfg.steps):
        opt.zero_grad()
        nn.functional.cross_entropy(head(feats), labels).backward()
        opt.step()
    with torch.no_grad():
        return head(query), head.weight.detach().clone(), head.bias.detach().clone()
