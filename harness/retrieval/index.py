"""k-nearest-neighbour retrieval over training features: one interface, four backends.

A retriever is anything with `search(queries (B, d) float32, k) -> (distances (B, k), indices (B, k))`,
nearest first. Backends (look up by name in RETRIEVERS):
  "faiss": exact faiss IndexFlatL2 / IndexFlatIP, moved to the GPU when faiss has GPU support and device="cuda".
  "torch": exact GEMM + top-k in torch (the GPU path where faiss-gpu is not installed).
  "ivfpq", "hnsw": approximate faiss indexes for corpora too large for exact search (harness.retrieval.approximate).
Metric "l2" ranks by squared Euclidean distance; "ip" by inner product (cosine on normalised features;
distances returned are negated inner products so smaller is nearer for both).
Ties are broken deterministically by training index: each search over-fetches `tie_margin` extra
candidates and re-sorts by (distance, index).
"""

from __future__ import annotations

from typing import Any, Protocol

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


class FaissIndexRetriever:
    """Any built faiss index (flat, IVF-PQ, HNSW, on CPU or GPU) behind the Retriever protocol.

    metric says what the index scores: "l2" (squared distances, returned as they are) or "ip" (inner
    products, returned negated so that smaller is nearer). Pickles by serialising the index (a GPU
    index comes back on the CPU), so one `ray.put` ships it to every actor.
    """

    def __init__(self, index, metric: str = "l2", tie_margin: int = 8) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.index, self.metric, self.tie_margin = index, metric, tie_margin
        self.size, self.dim = int(index.ntotal), int(index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (B, d) -> distances (B, k), indices (B, k) nearest first; index -1 (distance inf)
        where an approximate index found fewer than k."""
        _check_k(k, self.size)
        queries = check_features("queries", queries, self.dim)
        dist, idx = self.index.search(queries, min(self.size, k + self.tie_margin))
        if self.metric == "ip":
            dist = -dist
        return _tie_break(dist, idx, k)

    def cpu_index(self):
        """The faiss index on the CPU (a copy when it lives on a GPU): what serialising needs."""
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if hasattr(self.index, "getDevice") else self.index

    def __getstate__(self) -> dict:
        import faiss

        return {"index": faiss.serialize_index(self.cpu_index()), "metric": self.metric, "tie_margin": self.tie_margin}

    def __setstate__(self, state: dict) -> None:
        import faiss

        index = faiss.deserialize_index(state["index"])
        FaissIndexRetriever.__init__(self, index, state["metric"], state["tie_margin"])


@RETRIEVERS.register("faiss")
class FaissRetriever(FaissIndexRetriever):
    """Exact flat faiss index (CPU, or GPU when available and asked for)."""

    def __init__(self, features: np.ndarray, metric: str = "l2", device: str = "cpu", tie_margin: int = 8) -> None:
        import faiss  # heavy: imported when the backend is chosen

        features = check_features("training features", features)
        dim = features.shape[1]
        index: Any = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, torch.device(device).index or 0, index)
        index.add(features)
        super().__init__(index, metric, tie_margin)


# floats in one (queries, N) distance block: 2 GiB, so a chunk of queries against ImageNet's 1.23M training points
# is ~440 queries (a GEMM of ~0.3 TFLOP, still compute-bound) and the search never holds more than one block (a fixed
# 4096 queries made 20 GB blocks, and with their temporaries ran an 80 GB GPU out of memory)
BLOCK_FLOATS = 2**29
MAX_QUERY_CHUNK = 4096


@RETRIEVERS.register("torch")
class TorchExactRetriever:
    """Exact search by GEMM + top-k on `device`: ||q - x||² = ||q||² - 2 q·x + ||x||² (or -q·x), in chunks of
    queries whose (chunk, N) distance block holds at most BLOCK_FLOATS floats (query_chunk None) or query_chunk."""

    def __init__(
        self, features: np.ndarray, metric: str = "l2", device: str = "cpu", tie_margin: int = 8,
        query_chunk: int | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        features = check_features("training features", features)
        self.size, self.dim = features.shape
        if query_chunk is None:
            query_chunk = max(1, min(MAX_QUERY_CHUNK, BLOCK_FLOATS // self.size))
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
            dist = q @ self.features.T  # (b, N): the scores q·x, turned into distances in place (one block)
            if self.metric == "l2":  # (-2 q·x + ||q||²) + ||x||²: the same roundings as ||q||² - 2 q·x + ||x||²
                dist.mul_(-2).add_((q.double() ** 2).sum(1, keepdim=True).float()).add_(self.sq_norms)
            else:
                dist.neg_()
            d, i = torch.topk(dist, fetch, dim=1, largest=False, sorted=True)
            dists.append(d.cpu().numpy())
            idxs.append(i.cpu().numpy())
        return _tie_break(np.concatenate(dists), np.concatenate(idxs), k)


def build_retriever(
    features: np.ndarray, backend: str = "faiss", metric: str = "l2", device: str = "cpu", **options
) -> Retriever:
    """A retriever over `features` (N, d) by backend name (RETRIEVERS.names()); options go to the backend."""
    return RETRIEVERS.get(backend)(features, metric=metric, device=device, **options)


def retrieve_neighbours(retriever: Retriever, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (B, k) of the k nearest training points of each query, nearest first."""
    return retriever.search(queries, k)[1]
