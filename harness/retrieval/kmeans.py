"""k-means centroids of training features (the MoE variant's experts), by faiss."""

from __future__ import annotations

import numpy as np

from harness.retrieval.index import check_features


def kmeans_centroids(features: np.ndarray, clusters: int, iterations: int = 20, seed: int = 0,
                     gpu: bool = False, restarts: int = 1) -> np.ndarray:
    """(clusters, d) float32 centroids of faiss k-means on `features` (N, d): the best (lowest squared
    error) of `restarts` runs from different random initial centroids, `iterations` Lloyd steps each."""
    import faiss

    features = check_features("training features", features)
    if not 1 <= clusters <= features.shape[0]:
        raise ValueError(f"experts = {clusters} must be between 1 and the number of training points "
                         f"{features.shape[0]}")
    if restarts < 1:
        raise ValueError(f"k-means restarts must be >= 1, got {restarts}")
    km = faiss.Kmeans(features.shape[1], clusters, niter=iterations, seed=seed, gpu=gpu, nredo=restarts,
                      max_points_per_centroid=max(256, -(-features.shape[0] // clusters)), verbose=False)
    km.train(features)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)
