"""S6: the MoE experts equal one-at-a-time fine-tuning, routing picks the nearest centroid, chunking is exact."""

import numpy as np
import pytest
import torch

from harness.retrieval import kmeans_centroids
from harness.trials.moe import MoETrialConfig, moe_trial
from harness.ttt.linear import HeadTTTConfig, head_ttt_one_point
from harness.ttt.moe import (MOE_SPECS, expert_neighbours, fit_experts, moe_logits, moe_spec, route_to_centroids)


def _data(n=300, d=8, C=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :C].argmax(1) + (rng.random(n) < 0.2)) % C  # learnable with some label noise
    W, c = rng.normal(size=(C, d)).astype(np.float32) * 0.3, rng.normal(size=C).astype(np.float32) * 0.1
    return x, y.astype(np.int64), W, c


def _t(a, dtype=torch.float32):
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def test_one_expert_equals_fine_tuning_on_the_centroids_neighbours():
    x, y, W, c = _data()
    cfg = HeadTTTConfig(lr=0.05, steps=15, k=40)
    centroids = kmeans_centroids(x, 1)  # (1, d): the mean of the training features
    np.testing.assert_allclose(centroids[0], x.mean(0), atol=1e-5)
    nb = expert_neighbours(x, centroids, cfg.k)
    brute = np.argsort(((x - centroids[0]) ** 2).sum(1), kind="stable")[: cfg.k]
    assert set(nb[0]) == set(brute)
    queries = np.random.default_rng(1).normal(size=(25, x.shape[1])).astype(np.float32)
    routes = route_to_centroids(queries, centroids)
    assert (routes == 0).all()
    logits = moe_logits(_t(W), _t(c), _t(x), _t(y, torch.int64), _t(centroids), _t(nb, torch.int64), _t(queries),
                        _t(routes, torch.int64), cfg)
    _, ref_W, ref_c = head_ttt_one_point(_t(W), _t(c), _t(x[brute]), _t(y[brute], torch.int64), _t(centroids[0]), cfg)
    torch.testing.assert_close(logits, _t(queries) @ ref_W.T + ref_c, atol=1e-5, rtol=1e-5)
    assert (ref_W - _t(W)).abs().max() > 1e-3  # the expert really moved away from the global head


def test_every_test_point_goes_to_its_nearest_centroid():
    rng = np.random.default_rng(2)
    centroids = rng.normal(size=(17, 6)).astype(np.float32)
    queries = rng.normal(size=(200, 6)).astype(np.float32)
    routes = route_to_centroids(queries, centroids)
    brute = ((queries[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(routes, brute)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_experts_equal_one_at_a_time_and_route_to_their_own_head(chunk):
    x, y, W, c = _data(seed=3)
    cfg = HeadTTTConfig(lr=0.02, steps=10, k=12)
    centroids = kmeans_centroids(x, 7, seed=0)
    nb = expert_neighbours(x, centroids, cfg.k)
    args = (_t(W), _t(c), _t(x), _t(y, torch.int64), _t(centroids), _t(nb, torch.int64), cfg)
    Ws, cs = fit_experts(*args, chunk=chunk)
    assert Ws.shape == (7, 4, 8) and cs.shape == (7, 4)
    for e in (0, 4, 6):
        _, ref_W, ref_c = head_ttt_one_point(_t(W), _t(c), _t(x[nb[e]]), _t(y[nb[e]], torch.int64), _t(centroids[e]), cfg)
        torch.testing.assert_close(Ws[e], ref_W, atol=1e-5, rtol=0)
        torch.testing.assert_close(cs[e], ref_c, atol=1e-5, rtol=0)
    queries = np.random.default_rng(4).normal(size=(40, 8)).astype(np.float32)
    routes = route_to_centroids(queries, centroids)
    logits = moe_logits(*args[:6], _t(queries), _t(routes, torch.int64), cfg, chunk=chunk)
    expected = torch.einsum("ncd,nd->nc", Ws[_t(routes, torch.int64)], _t(queries)) + cs[_t(routes, torch.int64)]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_table6_and_bad_expert_counts():
    assert sorted(MOE_SPECS) == [1, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 20_000, 50_000]
    s = moe_spec(10_000)
    assert (s.lr, s.epochs, s.neighbours) == (6e-4, 20, 30)
    with pytest.raises(ValueError, match="no Table 6 hyperparameters"):
        MoETrialConfig(experts=7)
    MoETrialConfig(experts=7, lr=1e-3, steps=2, neighbours=10)  # explicit values need no table row
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="experts = 6 must be between 1 and the number of training points 5"):
        kmeans_centroids(x, 6)
    with pytest.raises(ValueError, match="larger than the training set"):
        expert_neighbours(x, x[:2], 6)


def test_moe_trial_rows_on_real_mnist(mnist, tmp_path):
    """E = 1 on an untrained LeNet-280 (epochs 0): rows are per test point, experts/k columns filled."""
    cfg = MoETrialConfig(experts=1, model_size=280, epochs=0, test_points=40, cache_dir=str(tmp_path))
    rows = moe_trial(cfg, mnist)
    assert rows.height == 80 and set(rows["metric"]) == {"error", "cross_entropy"}
    assert set(rows["experts"]) == {1} and set(rows["k"]) == {60} and set(rows["method"]) == {"moe"}
    err = rows.filter(rows["metric"] == "error")["value"].to_numpy()
    assert set(np.unique(err)) <= {0.0, 1.0}
