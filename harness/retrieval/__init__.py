from harness.retrieval import approximate  # noqa: F401  registers the "ivfpq" and "hnsw" backends
from harness.retrieval.index import RETRIEVERS, FaissIndexRetriever, Retriever, build_retriever, retrieve_neighbours
from harness.retrieval.kmeans import kmeans_centroids

__all__ = ["RETRIEVERS", "FaissIndexRetriever", "Retriever", "build_retriever", "kmeans_centroids",
           "retrieve_neighbours"]
