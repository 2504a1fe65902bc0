"""A text index: a retriever over the texts' embeddings plus the texts; saved to and loaded from disk.

S3 indexes whole training documents (as tttlm does); neighbours come back most-similar-first under the
retrieval metric (RetrievalMetric): "cosine" = unit-normalised embeddings scored by inner product (MiniLM,
the default), "l2" = raw mean-pooled embeddings scored by L2 distance (tttlm's IndexFlatL2). The retriever
is any RETRIEVERS backend: kind "flat" is the exact "faiss" backend, right below ~1e5 texts; "ivfpq" the
Pile-scale choice; "hnsw" graph search (see harness.retrieval.approximate); "auto" is flat up to FLAT_MAX
texts, else ivfpq. An "ivfpq" index needs at least PQ_CENTROIDS texts (min_index_units): callers check their
corpus against it before any embedding. A search asks for at most as many neighbours as the index holds texts.

On disk a TextIndex is a folder: index.faiss, texts.jsonl (one JSON string per line, the
texts in index order) and meta.json (dim, n, embedder, metric, info). It is written to a temp folder beside
it and renamed, so a reader never sees half an index. A TextIndex pickles (the faiss index
serialised), so one `ray.put` gives every actor a replica.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from harness.retrieval.index import FaissIndexRetriever, Retriever, build_retriever

IndexKind = Literal["auto", "flat", "ivfpq", "hnsw"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
RetrievalMetric = Literal["cosine", "l2"]  # cosine: normalised embeddings, inner product; l2: raw ones (tttlm)
RETRIEVAL_METRICS: tuple[str, ...] = get_args(RetrievalMetric)
_INDEX_METRIC = {"cosine": "ip", "l2": "l2"}  # retrieval metric -> the faiss index's metric
FLAT_MAX = 100_000  # "auto" uses exact search up to this many units
_BACKEND = {"flat": "faiss", "ivfpq": "ivfpq", "hnsw": "hnsw"}  # index kind -> RETRIEVERS backend
# ivfpq's product quantiser codes each sub-vector in 8 bits (harness.retrieval.approximate): faiss trains its
# 2**8 centroids by k-means on the indexed vectors, so it refuses fewer vectors than that
PQ_CENTROIDS = 2**8


def resolve_index_kind(kind: str, n: int) -> str:
    """"auto" -> "flat" for n <= FLAT_MAX units, else "ivfpq"; other kinds unchanged (checked)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    return ("flat" if n <= FLAT_MAX else "ivfpq") if kind == "auto" else kind


def min_index_units(kind: str) -> int:
    """The fewest units an index of `kind` can be built over: PQ_CENTROIDS for "ivfpq", else 1 ("auto" picks
    ivfpq only above FLAT_MAX units)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    return PQ_CENTROIDS if kind == "ivfpq" else 1


def build_text_retriever(vectors: np.ndarray, kind: str = "auto", metric: str = "cosine", **options) -> Retriever:
    """vectors (n, d) float32 (unit rows for "cosine") -> a retriever of `kind` holding all n, scoring by `metric`
    (a RetrievalMetric). options go to the backend (ivfpq: pq_m, nprobe, train_sample, seed; hnsw: hnsw_m)."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {x.shape}")
    if metric not in RETRIEVAL_METRICS:
        raise ValueError(f"retrieval metric must be one of {RETRIEVAL_METRICS}, got {metric!r}")
    resolved = resolve_index_kind(kind, x.shape[0])
    if x.shape[0] < min_index_units(resolved):
        raise ValueError(f"an {resolved!r} index needs at least {min_index_units(resolved)} vectors (its product "
                         f"quantiser trains {PQ_CENTROIDS} centroids), got {x.shape[0]}; use kind 'flat' or 'hnsw'")
    return build_retriever(x, _BACKEND[resolved], metric=_INDEX_METRIC[metric], **options)


class TextIndex:
    """Texts + a retriever over their embeddings. `info`: provenance kept in meta.json."""

    def __init__(self, retriever: Retriever, texts: list[str], embedder: str = "", info: dict | None = None) -> None:
        if retriever.size != len(texts):
            raise ValueError(f"index holds {retriever.size} vectors but {len(texts)} texts were given")
        self.retriever, self.texts, self.embedder, self.info = retriever, texts, embedder, dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.retriever.dim)

    @property
    def metric(self) -> str:
        """The RetrievalMetric the index scores by ("cosine" or "l2")."""
        return "l2" if getattr(self.retriever, "metric", "ip") == "l2" else "cosine"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (B, d) -> (distances (B, k), ids (B, k)), most similar first. ValueError unless
        1 <= k <= the number of texts; id -1 (distance inf) only where an approximate index found fewer than k."""
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {q.shape} but the index has dimension {self.dim}: "
                             f"was it built with a different embedder?")
        if not 1 <= k <= len(self.texts):
            raise ValueError(f"k = {k} neighbours asked of an index of {len(self.texts)} texts: "
                             f"k must be between 1 and {len(self.texts)}")
        return self.retriever.search(q, k)

    def neighbour_texts(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """Texts of the k nearest units per query, most similar first; fewer only where an approximate index
        found fewer (callers count them: harness.ttt.lora.PreparedSequence.n_neighbours)."""
        _, ids = self.search(queries, k)
        return [[self.texts[i] for i in row if i >= 0] for row in ids]

    def save(self, folder: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the index to `folder` atomically. overwrite=False keeps an existing folder (another process
        saved the same index first) and discards this copy."""
        import faiss

        from harness.results.atomic import temp_dir_beside  # lazy: harness.results imports polars

        folder = Path(folder)
        tmp = temp_dir_beside(folder)
        try:
            faiss.write_index(_faiss_retriever(self.retriever).cpu_index(), str(tmp / "index.faiss"))
            with open(tmp / "texts.jsonl", "w", encoding="utf-8") as f:
                for t in self.texts:
                    f.write(json.dumps(t) + "\n")
            (tmp / "meta.json").write_text(json.dumps({"dim": self.dim, "n": len(self.texts), "embedder": self.embedder,
                                                       "metric": self.metric, "info": self.info}, sort_keys=True))
            if overwrite and folder.exists():
                shutil.rmtree(folder)
            try:
                os.replace(tmp, folder)  # a directory cannot replace a non-empty one: OSError
            except OSError:
                if overwrite or not folder.exists():
                    raise
                shutil.rmtree(tmp)  # another writer saved its copy first; keep that one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, expect_dim: int | None = None) -> TextIndex:
        import faiss

        folder = Path(folder)
        for name in ("index.faiss", "texts.jsonl"):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder} is not a saved TextIndex: {name} is missing")
        index = faiss.read_index(str(folder / "index.faiss"))
        if expect_dim is not None and index.d != expect_dim:
            raise ValueError(f"index {folder} has dimension {index.d} but the embedder gives {expect_dim}")
        with open(folder / "texts.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line) for line in f]
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
        metric = _INDEX_METRIC[meta.get("metric", "cosine")]
        return cls(FaissIndexRetriever(index, metric=metric), texts, meta.get("embedder", ""), meta.get("info"))


def _faiss_retriever(retriever: Retriever) -> FaissIndexRetriever:
    if not isinstance(retriever, FaissIndexRetriever):
        raise TypeError(f"only faiss retrievers can be saved, got {type(retriever).__name__}")
    return retriever


class Retrieval:
    """Embedder + TextIndex as the `NeighbourFn` of harness.ttt.lora: (query texts, k) -> texts."""

    def __init__(self, embedder, index: TextIndex) -> None:
        if embedder.dim != index.dim:
            raise ValueError(f"embedder {getattr(embedder, 'name', '')!r} gives dimension {embedder.dim} but the "
                             f"index has dimension {index.dim}")
        if getattr(embedder, "normalize", True) != (index.metric == "cosine"):
            raise ValueError(f"the index scores by {index.metric!r} but the query embedder "
                             f"{'normalises' if getattr(embedder, 'normalize', True) else 'does not normalise'}")
        self.embedder, self.index = embedder, index

    def __call__(self, queries: list[str], k: int) -> list[list[str]]:
        return self.index.neighbour_texts(self.embedder.embed(queries), k)


def build_text_index(embedder, texts: list[str], kind: str = "auto", **options) -> TextIndex:
    """Embed `texts` in this process and index them (Ray-sharded embedding: harness.distributed.lm_sharding);
    the metric follows the embedder: cosine when it normalises, else l2."""
    if not texts:
        raise ValueError("cannot build an index over an empty list of texts")
    metric = "cosine" if getattr(embedder, "normalize", True) else "l2"
    return TextIndex(build_text_retriever(embedder.embed(texts), kind, metric, **options), list(texts),
                     getattr(embedder, "name", ""))
