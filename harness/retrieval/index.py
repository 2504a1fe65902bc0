"""Exact k-nearest-neighbour retrieval over training features: one interface, two backends.

A retriever is anything with `search(queries (B, d) float32, k) -> (distances (B, k), indices (B, k))`,
nearest first. Backends (look up by name in RETRIEVERS):
  "faiss": faiss IndexFlatL2 / IndexFlatIP, moved to the GPU when faiss has GPU support and device="cuda".
  "torch": exact GEMM + top-k in torch (the GPU path where faiss-gpu is not installed).
Metric "l2" ranks by squared Euclidean distance; "ip" by inner product (cosine on normalised features;
distances returned are negated inner products so smaller is nearer for both).
Ties are broken deterministically by training index: each search over-fetches `tie_margin` extra
candidates and re-sorts by (distance, index).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from harness.registry import Registry

RETRIEVERS: Registry = Registry("retriever")
METRICS = ("l2", "ip")


class Retriever(Protocol):
    size: int
    dim: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def check_features(name: str, x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float32 C-contiguous (n, d) array, or a ValueError naming `name` and the problem."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]} but the index holds dimension {dim}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name} holds NaN or infinite values in {bad} rows")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_k(k: int, size: int) -> None:
    if not 1 <= k <= size:
        raise ValueError(f"k = {k} must be between 1 and the training-set size {size}")


def _tie_break(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) and keep the first k. dist, idx: (B, k') with k' >= k."""
    valid = idx >= 0
    dist = np.where(valid, dist, np.inf)
    order = np.lexsort((np.where(valid, idx, np.iinfo(np.int64).max), dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1).astype(np.int64)


@RETRIEVERS.register("faiss")
class FaissRetriever:
    """Exact flat faiss index (CPU, or GPU when available and asked for)."""

    def __init__(self, features: np.ndarray, metric: str = "l2", device: str = "cpu", tie_margin: int = 8) -> None:
        import faiss  # heavy: imported when the backend is chosen

        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        features = check_features("training features", features)
        self.size, self.dim = features.shape
        self.metric, self.tie_margin = metric, tie_margin
        index = faiss.IndexFlatL2(self.dim) if metric == "l2" else faiss.IndexFlatIP(self.dim)
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, torch.device(device).index or 0, index)
        index.add(features)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, self.size)
        queries = check_features("queries", queries, self.dim)
        dist, idx = self.index.search(queries, min(self.size, k + self.tie_margin))
        if self.metric == "ip":
            dist = -dist
        return _tie_break(dist, idx, k)


@RETRIEVERS.register("torch")
class TorchExactRetriever:
    """Exact search by GEMM + top-k on `device`: ||q - x||² = ||q||² - 2 q·x + ||x||² (or -q·x)."""

    def __init__(
        self, features: np.ndarray, metric: str = "l2", device: str = "cpu", tie_margin: int = 8,
        query_chunk: int = 4096,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        features = check_features("training features", features)
        self.size, self.dim = features.shape
        self.metric, self.tie_margin, self.query_chunk = metric, tie_margin, query_chunk
        self.device = torch.device(device)
        self.features = torch.from_numpy(features).to(self.device)  # (N, d)
        self.sq_norms = (self.features.double() ** 2).sum(1).float()  # (N,)

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, self.size)
        queries = check_features("queries", queries, self.dim)
        fetch = min(self.size, k + self.tie_margin)
        dists, idxs = [], []
        for start in range(0, queries.shape[0], self.query_chunk):
            q = torch.from_numpy(queries[start : start + self.query_chunk]).to(self.device)  # (b, d)
            scores = q @ self.features.T  # (b, N)
            if self.metric == "l2":
                dist = (q.double() ** 2).sum(1, keepdim=True).float() - 2 * scores + self.sq_norms
            else:
                dist = -scores
            d, i = torch.topk(dist, fetch, dim=1, largest=False, sorted=True)
            dists.append(d.cpu().numpy())
            idxs.append(i.cpu().numpy())
        return _tie_break(np.concatenate(dists), np.concatenate(idxs), k)


def build_retriever(
    features: np.ndarray, backend: str = "faiss", metric: str = "l2", device: str = "cpu"
) -> Retriever:
    """A retriever over `features` (N, d) by backend name ("faiss" or "torch")."""
    return RETRIEVERS.get(backend)(features, metric=metric, device=device)


def retrieve_neighbours(retriever: Retriever, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (B, k) of the k nearest training points of each query, nearest first."""
    return retriever.search(queries, k)[1]
