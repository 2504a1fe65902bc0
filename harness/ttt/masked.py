"""Masked TTT in concept space (paper §3 O2, eq. 3): B test points at once, exactly as B separate runs.

For test point b with neighbour concepts X_b (k, d1) (the SAE's Φ̂) and labels y_b (k,), learn a head
(W_b, c_b), starting from the global head, jointly with a mask m_b = 1{θ_b > 0} over the d1 concepts:

    L_b = (1/k) Σ_i CE(W_b (m_b ⊙ x_bi) + c_b, y_bi) + λ ‖m_b‖²

The mask is hard in the forward pass; its gradient is the straight-through estimate through
s = sigmoid(θ/τ): ∂m/∂θ := ∂s/∂θ = s(1 − s)/τ (τ = 0.1, λ = 0.2 in §3). θ starts at θ0 > 0 (all concepts on,
so step 0 is the global head); concepts that no neighbour activates get only the penalty's gradient and
switch off. Stacking the B points, with M = m[:, None, :]:

    Z   = (X ⊙ M) Wᵀ + c                       (B, k, C)    one bmm
    D   = (softmax(Z) − onehot(y)) / k          (B, k, C)    ∂L/∂Z
    ∇W  = Dᵀ (X ⊙ M)                            (B, C, d1)   one bmm
    ∇c  = Σ_i D                                 (B, C)
    ∇θ  = (Σ_i X ⊙ (D W) + 2λ m) ⊙ s(1 − s)/τ   (B, d1)      one bmm: ∂L/∂m_j = Σ_i X_ij (D_i · W_:j)

Point b's parameters appear only in L_b and Adam is element-wise, so one Adam over the stacked (W, c, θ)
applies exactly the updates of B separate runs. `masked_ttt_one_point` is the plain autograd loop
(nn.Linear, a θ parameter, torch.optim.Adam) that the tests hold the batched engine to. The prediction is
W_b (m_b ⊙ x*_b) + c_b with the final mask.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from harness.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MaskedTTTConfig:
    """Full-batch Adam on the k neighbours over head and mask. Defaults: §3 / §E.3 (S8)."""

    lr: float = 0.02
    steps: int = 80
    k: int = 50
    penalty: float = 0.2  # λ of λ‖m‖² (§3: 0.2 on ImageNet; §E.2: 1e-3 on MNIST)
    temperature: float = 0.1  # τ of the straight-through sigmoid(θ/τ) (§3, footnote 4)
    mask_init: float = 0.1  # θ0 of every concept (> 0: all on at the start; the paper does not say)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"MaskedTTTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.steps < 0 or self.k < 1 or self.penalty < 0:
            raise ConfigError(f"MaskedTTTConfig needs steps >= 0, k >= 1 and penalty >= 0, got steps {self.steps}, "
                              f"k {self.k}, penalty {self.penalty}")


def batched_masked_ttt(weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                       query: torch.Tensor, cfg: MaskedTTTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked TTT of B copies of the head, one per test point (module docstring).

    weight (C, d1), bias (C,): the global head on Φ̂. feats (B, k, d1): each point's neighbour concepts.
    labels (B, k) int64. query (B, d1): the test points' concepts.
    Returns logits (B, C) of each adapted, masked head on its own test point and the masks (B, d1) bool."""
    B, k, d1 = feats.shape
    C = weight.shape[0]
    if weight.shape[1] != d1 or bias.shape != (C,) or labels.shape != (B, k) or query.shape != (B, d1):
        raise ValueError(f"shapes disagree: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, feats "
                         f"{tuple(feats.shape)}, labels {tuple(labels.shape)}, query {tuple(query.shape)}")
    W = weight.detach().unsqueeze(0).repeat(B, 1, 1)  # (B, C, d1)
    c = bias.detach().unsqueeze(0).repeat(B, 1)  # (B, C)
    theta = torch.full((B, d1), cfg.mask_init, dtype=feats.dtype, device=feats.device)  # (B, d1)
    opt = torch.optim.Adam([W, c, theta], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    onehot = nn.functional.one_hot(labels, C).to(feats.dtype)  # (B, k, C)
    for _ in range(cfg.steps):
        m = (theta > 0).to(feats.dtype)  # (B, d1)
        s = torch.sigmoid(theta / cfg.temperature)  # (B, d1)
        Xm = feats * m.unsqueeze(1)  # (B, k, d1)
        Z = torch.baddbmm(c.unsqueeze(1), Xm, W.transpose(1, 2))  # (B, k, C)
        D = (torch.softmax(Z, dim=-1) - onehot) / k  # (B, k, C)
        dm = (feats * torch.bmm(D, W)).sum(1) + 2 * cfg.penalty * m  # (B, d1)  ∂L/∂m
        W.grad = torch.bmm(D.transpose(1, 2), Xm)  # (B, C, d1)
        c.grad = D.sum(1)  # (B, C)
        theta.grad = dm * s * (1 - s) / cfg.temperature  # (B, d1)
        opt.step()
    mask = theta > 0  # (B, d1)
    logits = torch.baddbmm(c.unsqueeze(1), (query * mask).unsqueeze(1), W.transpose(1, 2)).squeeze(1)  # (B, C)
    return logits, mask


def masked_ttt_one_point(weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                         query: torch.Tensor, cfg: MaskedTTTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference for ONE test point, written plainly: feats (k, d1), labels (k,), query (d1,).

    An nn.Linear head and a θ parameter, the straight-through mask m = hard + s − s.detach(), autograd and
    torch.optim.Adam on CE + λ Σ m². Returns (logits (C,), mask (d1,) bool)."""
    head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device, weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    theta = nn.Parameter(torch.full((weight.shape[1],), cfg.mask_init, dtype=weight.dtype, device=weight.device))
    opt = torch.optim.Adam([*head.parameters(), theta], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    for _ in range(cfg.steps):
        soft = torch.sigmoid(theta / cfg.temperature)
        m = (theta > 0).to(theta.dtype) + soft - soft.detach()  # value: the hard mask; gradient: the sigmoid's
        loss = nn.functional.cross_entropy(head(feats * m), labels) + cfg.penalty * (m**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mask = theta > 0
        return head(query * mask), mask


def mask_statistics(mask: torch.Tensor, neighbour_concepts: torch.Tensor,
                    query_concepts: torch.Tensor) -> dict[str, torch.Tensor]:
    """§3 O2 and §E.2's set sizes per test point, each (B,) int64.

    mask (B, d1) bool: the learned m. neighbour_concepts (B, k, d1): the neighbours' Φ̂ (active: nonzero).
    query_concepts (B, d1): the test point's Φ̂. With m_i the neighbours' and m_x* the test point's active sets:
      mask_size                             ‖m‖₀                 (§3: ≈ 40; §E.2: ≈ 24.5)
      neighbourhood_concepts                |∪_i m_i|            (≈ 180; ≈ 144.5)
      test_point_concepts_in_mask           |m_x* ∩ m|           (‖Φ̂(x*) ⊙ m‖₀ ≈ 11; ≈ 7.9)
      neighbourhood_concepts_in_mask        |∪_i (m_i ∩ m)|      (§E.2: ≈ 7.1)
      test_point_concepts_in_neighbourhood  |∪_i (m_i ∩ m_x*)|   (§E.2: ≈ 8.3)"""
    union = (neighbour_concepts != 0).any(1)  # (B, d1)
    own = query_concepts != 0  # (B, d1)
    return {
        "mask_size": mask.sum(1),
        "neighbourhood_concepts": union.sum(1),
        "test_point_concepts_in_mask": (own & mask).sum(1),
        "neighbourhood_concepts_in_mask": (union & mask).sum(1),
        "test_point_concepts_in_neighbourhood": (union & own).sum(1),
    }
