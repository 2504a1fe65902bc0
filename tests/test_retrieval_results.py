"""Retrieval backends agree with brute force; bootstrap CIs; result rows and atomic Parquet."""

import numpy as np
import polars as pl
import pytest

from harness.eval.metrics import bootstrap_ci
from harness.results.schema import RESULT_SCHEMA, RunInfo, point_rows, read_results, summarise, write_parquet_atomic
from harness.retrieval import build_retriever, kmeans_centroids


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_backends_match_brute_force(backend, metric):
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((500, 16)).astype(np.float32), rng.standard_normal((40, 16)).astype(np.float32)
    dist, idx = build_retriever(x, backend, metric).search(q, 7)
    score = ((q[:, None] - x[None]) ** 2).sum(-1) if metric == "l2" else -(q @ x.T)
    ref = np.argsort(score, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(score, ref, 1), rtol=1e-4, atol=1e-4)


def test_ties_are_broken_by_index_in_both_backends():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # each point 4 times: indices 0-3, 4-7, 8-11
    q = np.array([[0, 1, 0]], np.float32)
    for backend in ("faiss", "torch"):
        assert build_retriever(x, backend).search(q, 5)[1].tolist() == [[4, 5, 6, 7, 0]]


def test_retrieval_bad_input():
    x = np.zeros((5, 3), np.float32)
    r = build_retriever(x)
    with pytest.raises(ValueError, match="k = 6 must be between 1 and the training-set size 5"):
        r.search(x, 6)
    with pytest.raises(ValueError, match="queries has dimension 2 but the index holds dimension 3"):
        r.search(np.zeros((1, 2), np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        build_retriever(np.full((4, 2), np.nan, np.float32))
    with pytest.raises(KeyError, match="did you mean 'faiss'"):
        build_retriever(x, "fiass")


def test_kmeans_centroids():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 0], [0, 10], [-10, -10]], np.float32)
    x = (centres[rng.integers(0, 3, 600)] + rng.standard_normal((600, 2)) * 0.1).astype(np.float32)
    c = kmeans_centroids(x, 3, seed=1)
    assert sorted(np.round(c).astype(int).tolist()) == sorted(centres.astype(int).tolist())
    with pytest.raises(ValueError, match="experts = 601 must be between 1 and the number of training points 600"):
        kmeans_centroids(x, 601)


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    v = (rng.random(2000) < 0.2).astype(float)
    mean, lo, hi = bootstrap_ci(v, resamples=1000)
    assert lo < mean < hi and mean == pytest.approx(v.mean())
    se = np.sqrt(0.2 * 0.8 / 2000)  # normal approximation: 90% CI half-width 1.645 se
    assert (hi - lo) / 2 == pytest.approx(1.645 * se, rel=0.15)
    _, lo2, hi2 = bootstrap_ci(v[:200], resamples=1000)
    assert hi2 - lo2 > 2 * (hi - lo)
    groups = np.repeat(np.arange(5), 400)
    m, glo, ghi = bootstrap_ci(v, groups, resamples=1000)
    assert glo < m < ghi
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))


def test_rows_schema_summarise_and_atomic_write(tmp_path):
    run = RunInfo(study="s", dataset="d", model_size=10, seed=0, k=5)
    rows = pl.concat([
        point_rows(run, "ttt", "error", np.array([0, 1, 0, 0.0]), np.arange(4), hparams={"lr": 0.1}),
        point_rows(run, "global", "error", np.array([1, 1, 0, 1.0]), np.arange(4), k=None),
    ])
    assert rows.schema == pl.Schema(RESULT_SCHEMA)
    assert rows.filter(pl.col("method") == "global")["k"].null_count() == 4
    path = write_parquet_atomic(rows, tmp_path / "a" / "points.parquet")
    assert read_results(path).equals(rows)
    assert [p.name for p in path.parent.iterdir()] == ["points.parquet"]  # no temp file left
    table = summarise(rows, by=["method"])
    assert table.sort("method")["mean"].to_list() == [0.75, 0.25]
    with pytest.raises(ValueError, match="differs from point_ids"):
        point_rows(run, "ttt", "error", np.zeros(3), np.arange(4))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "t.parquet"
    good = pl.DataFrame({"a": [1, 2]})
    write_parquet_atomic(good, path)

    class Broken(pl.DataFrame):
        def write_parquet(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_parquet_atomic(Broken({"a": [3]}), path)
    assert pl.read_parquet(path).equals(good)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_torch_retriever_chunks_queries_to_a_bounded_block_with_the_same_neighbours(monkeypatch):
    """The (queries, N) distance block is bounded (BLOCK_FLOATS): a large N gets fewer queries per chunk (ImageNet's
    1.23M: ~440, not 4096), and any chunking gives the same neighbours and distances bit for bit."""
    from harness.retrieval import index

    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(37, 16)).astype(np.float32)
    whole = index.TorchExactRetriever(x, query_chunk=4096).search(q, 7)
    monkeypatch.setattr(index, "BLOCK_FLOATS", 500 * 5)
    small = index.TorchExactRetriever(x)
    assert small.query_chunk == 5
    for a, b in zip(small.search(q, 7), whole, strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    assert index.TorchExactRetriever(np.zeros((1_281_167 - 50_000, 1), np.float32)).query_chunk == 436
