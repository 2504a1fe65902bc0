from harness.retrieval.index import RETRIEVERS, Retriever, build_retriever, retrieve_neighbours
from harness.retrieval.kmeans import kmeans_centroids

__all__ = ["RETRIEVERS", "Retriever", "build_retriever", "kmeans_centroids", "retrieve_neighbours"]
