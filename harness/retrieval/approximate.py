"""Approximate faiss retrievers for corpora too large for exact search: IVF-PQ and HNSW.

  "ivfpq": an inverted file of nlist ~ 4 sqrt(n) cells (at least 39 training points per cell, as faiss
           wants), each vector stored as `pq_m` one-byte product-quantisation codes (pq_m must divide
           d), `nprobe` cells visited per query. The Pile-scale choice: 210M units fit in ~210M * pq_m
           bytes of RAM. k-means of the coarse quantiser and the PQ codebooks train on a seeded sample.
  "hnsw":  a graph over the full vectors (`hnsw_m` links per node): higher recall, full-vector memory.

Both are registered in RETRIEVERS and return FaissIndexRetriever (CPU; `device` is accepted for the
common signature and ignored), so they search, tie-break and pickle like the exact "faiss" backend.
"""

from __future__ import annotations

import math

import numpy as np

from harness.retrieval.index import METRICS, RETRIEVERS, FaissIndexRetriever, check_features

ADD_BATCH = 1_000_000  # vectors added to an index per call (bounds the temporary copies faiss makes)


def _faiss_metric(metric: str) -> int:
    import faiss

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _filled(index, x: np.ndarray, metric: str) -> FaissIndexRetriever:
    for s in range(0, x.shape[0], ADD_BATCH):
        index.add(x[s:s + ADD_BATCH])
    return FaissIndexRetriever(index, metric)


@RETRIEVERS.register("ivfpq")
def ivfpq_retriever(features: np.ndarray, metric: str = "l2", device: str = "cpu", pq_m: int = 16,
                    nprobe: int = 32, train_sample: int = 200_000, seed: int = 0) -> FaissIndexRetriever:
    """IVF-PQ over features (n, d); see the module docstring for the parameters."""
    import faiss

    x = check_features("training features", features)
    n, d = x.shape
    if d % pq_m:
        raise ValueError(f"IVF-PQ needs the dimension {d} to be a multiple of pq_m = {pq_m}")
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    fm = _faiss_metric(metric)
    coarse = faiss.IndexFlatL2(d) if fm == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(coarse, d, nlist, pq_m, 8, fm)
    rng = np.random.default_rng(seed)
    index.train(x[rng.choice(n, size=min(n, train_sample), replace=False)])
    index.nprobe = min(nprobe, nlist)
    return _filled(index, x, metric)


@RETRIEVERS.register("hnsw")
def hnsw_retriever(features: np.ndarray, metric: str = "l2", device: str = "cpu",
                   hnsw_m: int = 32) -> FaissIndexRetriever:
    """HNSW graph search over features (n, d) with `hnsw_m` links per node."""
    import faiss

    x = check_features("training features", features)
    return _filled(faiss.IndexHNSWFlat(x.shape[1], hnsw_m, _faiss_metric(metric)), x, metric)
