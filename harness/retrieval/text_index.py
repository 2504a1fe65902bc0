"""A faiss index over training texts: build (flat / IVF-PQ / HNSW), search, save to and load from disk.

Vectors are unit-normalised sentence embeddings and the metric is inner product (= cosine), so
neighbours come back most-similar-first. `flat` is exact and right below ~1e5 units; `ivfpq`
(nlist ~ 4 sqrt(n) cells, PQ codes of `pq_m` bytes) is the Pile-scale choice (210M units fit in
~210M * pq_m bytes of RAM); `hnsw` is exact-vector graph search.

On disk a TextIndex is a folder: index.faiss, texts.jsonl (one JSON string per line, the unit
texts in index order) and meta.json (kind, dim, embedder). It is written to a temp folder and
renamed, so a reader never sees half an index.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

INDEX_KINDS = ("auto", "flat", "ivfpq", "hnsw")
FLAT_MAX = 100_000  # "auto" uses exact search up to this many units


def build_faiss_index(vectors: np.ndarray, kind: str = "auto", pq_m: int = 16, nprobe: int = 32,
                      hnsw_m: int = 32, train_sample: int = 200_000, seed: int = 0, add_batch: int = 1_000_000):
    """vectors (n, d) float32 unit rows -> a faiss inner-product index holding all n (added in batches)."""
    import faiss

    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {x.shape}")
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else "ivfpq"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        if d % pq_m:
            raise ValueError(f"IVF-PQ needs the dimension {d} to be a multiple of pq_m = {pq_m}")
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per cell
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, train_sample), replace=False)]
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    for s in range(0, n, add_batch):
        index.add(x[s:s + add_batch])
    return index


class TextIndex:
    """Unit texts + their faiss index. search(queries (B, d), k) -> (scores (B, k), ids (B, k)), ids -1 = none."""

    def __init__(self, index, texts: list[str], embedder: str = "") -> None:
        if index.ntotal != len(texts):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(texts)} texts were given")
        self.index, self.texts, self.embedder = index, texts, embedder

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {q.shape} but the index has dimension {self.dim}: "
                             f"was it built with a different embedder?")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.index.search(q, min(k, max(1, len(self.texts))))

    def neighbour_texts(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """Texts of the k nearest units per query, most similar first (fewer if the index is small)."""
        _, ids = self.search(queries, k)
        return [[self.texts[i] for i in row if i >= 0] for row in ids]

    def save(self, folder: str | os.PathLike) -> Path:
        import faiss

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            with open(tmp / "texts.jsonl", "w", encoding="utf-8") as f:
                for t in self.texts:
                    f.write(json.dumps(t) + "\n")
            (tmp / "meta.json").write_text(json.dumps({"dim": self.dim, "n": len(self.texts),
                                                       "embedder": self.embedder}))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, expect_dim: int | None = None) -> "TextIndex":
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
        return cls(index, texts, meta.get("embedder", ""))

    def to_bytes(self) -> tuple[np.ndarray, list[str], str]:
        """(serialised index, texts, embedder): what to `ray.put` for actor replicas."""
        import faiss

        return faiss.serialize_index(self.index), self.texts, self.embedder

    @classmethod
    def from_bytes(cls, blob: tuple[np.ndarray, list[str], str]) -> "TextIndex":
        import faiss

        data, texts, embedder = blob
        return cls(faiss.deserialize_index(data), texts, embedder)


class Retrieval:
    """Embedder + TextIndex as the `NeighbourFn` of harness.lm.ttt: (query texts, k) -> texts."""

    def __init__(self, embedder, index: TextIndex) -> None:
        if embedder.dim != index.dim:
            raise ValueError(f"embedder {getattr(embedder, 'name', '')!r} gives dimension {embedder.dim} but the "
                             f"index has dimension {index.dim}")
        self.embedder, self.index = embedder, index

    def __call__(self, queries: list[str], k: int) -> list[list[str]]:
        return self.index.neighbour_texts(self.embedder.embed(queries), k)


def build_text_index(embedder, texts: list[str], kind: str = "auto", **kwargs) -> TextIndex:
    if not texts:
        raise ValueError("cannot build an index over an empty list of texts")
    return TextIndex(build_faiss_index(embedder.embed(texts), kind, **kwargs), list(texts),
                     getattr(embedder, "name", ""))
