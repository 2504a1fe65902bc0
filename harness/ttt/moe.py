"""Mixture of linear-head experts (paper §E.5, after Bertolissi et al. 2025), trained batched.

Given training features X (N, d), labels y (N,), the global head (W, c) and E centroids μ_e (E, d)
of a k-means of X:

    expert e  = the global head fine-tuned by `steps` full-batch Adam steps on the mean CE over
                N_k(μ_e), the k training points nearest to μ_e                  (Table 6: lr, epochs, k)
    route(x*) = argmin_e ||x* - μ_e||²                                           (nearest centroid, L2)
    predict   = W_route(x*) x* + c_route(x*)

Expert training is exactly test-point TTT with the centroid standing in for the test point, so the
experts go through `batched_head_ttt` with B = experts, `chunk` experts at a time: memory is
O(chunk · (C·d + k·d)) whatever E is. `moe_logits` routes first, then fits each chunk and keeps only
the logits of the test points routed into it (the heads are dropped), so E = 5e4 stays bounded too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from harness.errors import ConfigError
from harness.retrieval.index import build_retriever, check_features
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt


@dataclasses.dataclass(frozen=True)
class ExpertSpec:
    """Table 6: fine-tuning of each expert (full-batch Adam, so epochs = steps)."""

    experts: int
    lr: float
    epochs: int
    neighbours: int

    def ttt_config(self) -> HeadTTTConfig:
        return HeadTTTConfig(lr=self.lr, steps=self.epochs, k=self.neighbours)


MOE_SPECS: dict[int, ExpertSpec] = {
    s.experts: s
    for s in (
        ExpertSpec(1, 6e-4, 2, 60),
        ExpertSpec(3, 2e-4, 1, 50),
        ExpertSpec(10, 6e-4, 2, 30),
        ExpertSpec(30, 1e-3, 1, 60),
        ExpertSpec(100, 8e-4, 2, 30),
        ExpertSpec(300, 4e-4, 3, 40),
        ExpertSpec(1_000, 6e-4, 10, 30),
        ExpertSpec(3_000, 4e-4, 30, 20),
        ExpertSpec(10_000, 6e-4, 20, 30),
        ExpertSpec(20_000, 4e-4, 50, 30),
        ExpertSpec(50_000, 4e-4, 40, 20),
    )
}


def moe_spec(experts: int) -> ExpertSpec:
    """Table 6's row for `experts`; a clear error lists the paper's expert counts."""
    try:
        return MOE_SPECS[experts]
    except KeyError:
        raise ConfigError(f"experts = {experts} has no Table 6 hyperparameters; choose from {sorted(MOE_SPECS)} "
                         "or pass lr / epochs / neighbours explicitly") from None


def route_to_centroids(queries: np.ndarray, centroids: np.ndarray, retriever: str = "faiss") -> np.ndarray:
    """Index (n,) int64 of each query's nearest centroid by L2 (ties: lowest index)."""
    centroids = check_features("centroids", centroids)
    queries = check_features("queries", queries, centroids.shape[1])
    return build_retriever(centroids, retriever, "l2").search(queries, 1)[1][:, 0]


def expert_neighbours(train_features: np.ndarray, centroids: np.ndarray, k: int,
                      retriever: str = "faiss") -> np.ndarray:
    """Indices (E, k) of each centroid's k nearest training points (L2, nearest first)."""
    n = train_features.shape[0]
    if k > n:
        raise ConfigError(f"experts' neighbours k = {k} is larger than the training set ({n} points)")
    return build_retriever(train_features, retriever, "l2").search(centroids, k)[1]


def _check_experts(centroids: torch.Tensor, neighbours: torch.Tensor, n_train: int) -> None:
    if centroids.ndim != 2 or neighbours.ndim != 2 or neighbours.shape[0] != centroids.shape[0]:
        raise ValueError(f"centroids {tuple(centroids.shape)} and neighbours {tuple(neighbours.shape)} "
                         "must be (E, d) and (E, k)")
    if neighbours.numel() and (int(neighbours.min()) < 0 or int(neighbours.max()) >= n_train):
        raise ValueError(f"neighbour indices must lie in [0, {n_train})")


def iter_expert_chunks(
    weight: torch.Tensor,
    bias: torch.Tensor,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    centroids: torch.Tensor,
    neighbours: torch.Tensor,
    cfg: HeadTTTConfig,
    chunk: int = 1024,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Fit the experts `chunk` at a time; yield (first expert index, W (b, C, d), c (b, C)) per chunk.

    weight (C, d), bias (C,): the global head. train_features (N, d), train_labels (N,) int64,
    centroids (E, d), neighbours (E, k) indices into the training set (k = cfg.k used).
    """
    _check_experts(centroids, neighbours, train_features.shape[0])
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    idx = neighbours[:, : cfg.k]
    for start in range(0, centroids.shape[0], chunk):
        nb = idx[start : start + chunk]  # (b, k)
        _, W, c = batched_head_ttt(weight, bias, train_features[nb], train_labels[nb], centroids[start : start + chunk],
                                   cfg, return_heads=True)
        yield start, W, c


def fit_experts(
    weight: torch.Tensor,
    bias: torch.Tensor,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    centroids: torch.Tensor,
    neighbours: torch.Tensor,
    cfg: HeadTTTConfig,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All experts' heads W (E, C, d), c (E, C): `iter_expert_chunks` concatenated (small E only)."""
    parts = list(iter_expert_chunks(weight, bias, train_features, train_labels, centroids, neighbours, cfg, chunk))
    return torch.cat([w for _, w, _ in parts]), torch.cat([c for _, _, c in parts])


def moe_logits(
    weight: torch.Tensor,
    bias: torch.Tensor,
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    centroids: torch.Tensor,
    neighbours: torch.Tensor,
    queries: torch.Tensor,
    routes: torch.Tensor,
    cfg: HeadTTTConfig,
    chunk: int = 1024,
) -> torch.Tensor:
    """Logits (n, C) of each query (n, d) under its routed expert (routes (n,) in [0, E)).

    Only experts that receive at least one query are fitted (the others cannot change a prediction);
    memory stays O(chunk · C · d) for any E.
    """
    E = centroids.shape[0]
    if routes.shape != (queries.shape[0],) or (routes.numel() and (int(routes.min()) < 0 or int(routes.max()) >= E)):
        raise ValueError(f"routes must have shape ({queries.shape[0]},) with values in [0, {E})")
    used = torch.unique(routes)  # (U,) sorted
    slot = torch.full((E,), -1, dtype=torch.long, device=routes.device)
    slot[used] = torch.arange(used.numel(), device=routes.device)
    logits = torch.empty(queries.shape[0], weight.shape[0], dtype=weight.dtype, device=weight.device)
    for start, W, c in iter_expert_chunks(weight, bias, train_features, train_labels, centroids[used], neighbours[used],
                                          cfg, chunk):
        local = slot[routes] - start  # position of each query's expert inside this chunk
        hit = (local >= 0) & (local < W.shape[0])
        rows = torch.nonzero(hit).squeeze(1)
        for s in range(0, rows.numel(), chunk):  # gather at most `chunk` heads at once
            r = rows[s : s + chunk]
            e = local[r]
            logits[r] = torch.bmm(W[e], queries[r].unsqueeze(2)).squeeze(2) + c[e]  # (r, C)
    return logits
