"""Measurements in concept space (paper §3 O1 / O3, §E.1) and of an SAE against known concepts (pure functions).

O1 (Fig 2): mean cosine similarity in Φ̂ between a test point and its k neighbours, whichever space chose them.
O3 (Fig 3, §E.1): per test point, a temperature τ fitted so that softmax(logits^Φ̂ / τ) is closest to the
Ψ̂-TTT distribution p^Ψ̂ in KL(p^Ψ̂ ‖ ·); then at each rank i = 1..r of the Φ̂-TTT's top-r classes

    relTV_i = E_x* |p^Ψ̂_i − p^Φ̂_i| / (½ (E_x* p^Ψ̂_i + E_x* p^Φ̂_i))

`relative_tv_terms` returns each point's summand, so relTV_i is their mean over the points.
"""

from __future__ import annotations

import numpy as np
import torch


def mean_cosine(query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of each query (B, d) with its neighbours (B, k, d) -> (B,); a zero vector
    has similarity 0 with everything."""
    q = torch.nn.functional.normalize(query, dim=-1)  # (B, d)
    n = torch.nn.functional.normalize(neighbours, dim=-1)  # (B, k, d)
    return torch.einsum("bd,bkd->bk", q, n).mean(1)


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, low: float = 1e-2, high: float = 1e2,
                    iterations: int = 60) -> torch.Tensor:
    """Per row, the τ in [low, high] minimising KL(target ‖ softmax(logits / τ)). logits, target (B, C) -> (B,).

    With β = 1/τ the objective logsumexp(β ℓ) − β E_target[ℓ] (+ const) is convex in β, its derivative
    E_softmax(βℓ)[ℓ] − E_target[ℓ] increases in β: bisection on its sign (in log β) finds the minimum; a τ
    at `low` or `high` means the optimum lies beyond."""
    logits = logits.double()
    aim = (target.double() * logits).sum(-1)  # (B,) E_target[ℓ]
    lo = torch.full_like(aim, np.log(1.0 / high))  # log β
    hi = torch.full_like(aim, np.log(1.0 / low))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        slope = (torch.softmax(mid.exp().unsqueeze(-1) * logits, -1) * logits).sum(-1) - aim  # (B,)
        lo, hi = torch.where(slope < 0, mid, lo), torch.where(slope < 0, hi, mid)
    return 1.0 / ((lo + hi) / 2).exp()


def ranked_probabilities(logits_phi: torch.Tensor, probs_psi: torch.Tensor, tau: torch.Tensor,
                         ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(p^Φ̂, p^Ψ̂) at the Φ̂ model's top-`ranks` classes, in its order: logits_phi, probs_psi (B, C), tau (B,)
    -> two (B, ranks); p^Φ̂ = softmax(logits_phi / τ)."""
    p_phi = torch.softmax(logits_phi.double() / tau.double().unsqueeze(-1), -1)  # (B, C)
    top_p, top_class = p_phi.topk(ranks, dim=-1)  # (B, r), sorted
    return top_p, probs_psi.double().gather(-1, top_class)


def relative_tv_terms(p_phi: torch.Tensor, p_psi: torch.Tensor) -> torch.Tensor:
    """Per point and rank, |p^Ψ̂_i − p^Φ̂_i| / (½ (mean p^Ψ̂_i + mean p^Φ̂_i)), means over the B points.
    (B, r) x 2 -> (B, r); its column means are relTV_1..r (module docstring)."""
    scale = 0.5 * (p_psi.mean(0) + p_phi.mean(0))  # (r,)
    return (p_psi - p_phi).abs() / scale


def concept_recovery(decoder: torch.Tensor, true_concepts: torch.Tensor) -> torch.Tensor:
    """For each true concept direction (m, d2), the best cosine with any SAE decoder row (d1, d2) -> (m,).

    A concept counts as recovered when this is >= 0.9 (one decoder row points along it)."""
    d = torch.nn.functional.normalize(decoder.double(), dim=1)
    t = torch.nn.functional.normalize(true_concepts.double(), dim=1)
    return (t @ d.T).max(1).values
