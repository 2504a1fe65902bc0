"""The batched TTT engine equals the one-point loop; TTT beats the global head where theory says it must."""

import numpy as np
import pytest
import torch

from harness.data.synthetic import LRHConfig, make_lrh
from harness.models.training import TrainConfig, train_classifier
from harness.retrieval import build_retriever
from harness.ttt import HeadTTTConfig, batched_head_ttt, head_ttt_one_point, majority_vote
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator


@pytest.mark.parametrize("B,k,d,C,steps,lr", [(6, 25, 12, 7, 40, 0.05), (3, 1, 5, 3, 10, 0.2), (5, 50, 30, 10, 60, 5e-3)])
def test_batched_equals_one_point_loop(B, k, d, C, steps, lr):
    g = torch.Generator().manual_seed(B * 1000 + k)
    W, c = torch.randn(C, d, generator=g) * 0.3, torch.randn(C, generator=g) * 0.3
    X, q = torch.randn(B, k, d, generator=g), torch.randn(B, d, generator=g)
    y = torch.randint(0, C, (B, k), generator=g)
    cfg = HeadTTTConfig(lr=lr, steps=steps, k=k)
    logits, Wb, cb = batched_head_ttt(W, c, X, y, q, cfg, return_heads=True)
    for b in range(B):
        ref_logits, ref_W, ref_c = head_ttt_one_point(W, c, X[b], y[b], q[b], cfg)
        assert torch.equal(ref_logits.argmax(), logits[b].argmax())
        torch.testing.assert_close(Wb[b], ref_W, atol=1e-5, rtol=0)
        torch.testing.assert_close(cb[b], ref_c, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[b], ref_logits, atol=1e-5, rtol=1e-5)
    # the heads really moved: a no-op engine would pass the comparisons above only if the loop were one too
    assert (Wb - W).abs().max() > 10 * 1e-5


def test_zero_steps_is_the_global_head():
    W, c = torch.randn(4, 6), torch.randn(4)
    q = torch.randn(3, 6)
    out = batched_head_ttt(W, c, torch.randn(3, 5, 6), torch.randint(0, 4, (3, 5)), q, HeadTTTConfig(lr=0.1, steps=0, k=5))
    torch.testing.assert_close(out, q @ W.T + c)


def test_heads_do_not_share_state():
    """Point 0's result must not depend on which other points share its batch."""
    g = torch.Generator().manual_seed(1)
    W, c = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    X, y, q = torch.randn(4, 10, 8, generator=g), torch.randint(0, 5, (4, 10), generator=g), torch.randn(4, 8, generator=g)
    cfg = HeadTTTConfig(lr=0.05, steps=20, k=10)
    alone = batched_head_ttt(W, c, X[:1], y[:1], q[:1], cfg)
    together = batched_head_ttt(W, c, X, y, q, cfg)
    torch.testing.assert_close(alone[0], together[0], atol=1e-6, rtol=0)


def test_shape_errors_name_the_problem():
    W, c = torch.randn(4, 6), torch.randn(4)
    cfg = HeadTTTConfig(lr=0.1, steps=1, k=5)
    with pytest.raises(ValueError, match="dimension 7 but the head expects 6"):
        batched_head_ttt(W, c, torch.randn(2, 5, 7), torch.zeros(2, 5, dtype=torch.long), torch.randn(2, 7), cfg)
    with pytest.raises(ValueError, match="labels have shape"):
        batched_head_ttt(W, c, torch.randn(2, 5, 6), torch.zeros(2, 4, dtype=torch.long), torch.randn(2, 6), cfg)
    with pytest.raises(ValueError, match="lr must be > 0"):
        HeadTTTConfig(lr=0.0, steps=1, k=1)


def test_majority_vote_counts_and_ties():
    labels = torch.tensor([[1, 2, 2, 3], [4, 5, 5, 4], [0, 0, 0, 9]])
    # row 1: 4 and 5 tie twice each; 4 has the nearest occurrence
    assert majority_vote(labels, 10).tolist() == [2, 4, 0]


def test_ttt_beats_global_on_superposed_concepts():
    """LRH classification data with d1 = 16 d2 concepts in superposition: a global linear head cannot
    separate them (interference), a local head on each point's neighbourhood can (paper §5)."""
    data = make_lrh(LRHConfig(d1=256, d2=16, s=1, n_train=12_000, n_test=300, task="classification", classes=5, seed=3))
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5)
    train_classifier(head, torch.from_numpy(data.train_psi), torch.from_numpy(data.train_y), TrainConfig(lr=0.01, batch_size=256, epochs=8))
    state = HeadState(data.train_psi, data.train_y, head.weight.detach().numpy(), head.bias.detach().numpy())
    out = HeadTTTEvaluator(state, HeadTTTConfig(lr=0.05, steps=50, k=30), majority_k=5, device="cpu")(
        {"point_id": np.arange(300), "feature": data.test_psi, "label": data.test_y})
    global_err = (out["pred_global"] != out["label"]).mean()
    ttt_err = (out["pred_ttt"] != out["label"]).mean()
    assert global_err > 0.3, global_err  # interference: the global head is far from perfect
    assert ttt_err < 0.05, ttt_err  # the local head is nearly exact
    assert out["ce_ttt"].mean() < out["ce_global"].mean()


def test_evaluator_equals_direct_engine_call():
    rng = np.random.default_rng(0)
    feats, labels = rng.standard_normal((200, 6)).astype(np.float32), rng.integers(0, 4, 200)
    W, c = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    q = rng.standard_normal((30, 6)).astype(np.float32)
    cfg = HeadTTTConfig(lr=0.05, steps=15, k=12)
    out = HeadTTTEvaluator(HeadState(feats, labels, W, c), cfg, majority_k=3, device="cpu", chunk=7)(
        {"point_id": np.arange(30), "feature": q, "label": np.zeros(30, np.int64)})
    idx = torch.from_numpy(build_retriever(feats).search(q, 12)[1])
    ref = batched_head_ttt(torch.from_numpy(W), torch.from_numpy(c), torch.from_numpy(feats)[idx],
                           torch.from_numpy(labels)[idx], torch.from_numpy(q), cfg)
    assert (out["pred_ttt"] == ref.argmax(1).numpy()).all()
    assert (out["pred_global"] == (q @ W.T + c).argmax(1)).all()


def test_evaluator_bad_input_is_caught_before_work():
    rng = np.random.default_rng(0)
    feats, labels = rng.standard_normal((20, 6)).astype(np.float32), rng.integers(0, 4, 20)
    W, c = rng.standard_normal((4, 6)).astype(np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="head weight has shape"):
        HeadState(feats, labels, W[:, :5], c)
    with pytest.raises(ValueError, match="ttt.k = 21 is larger than the training set"):
        HeadTTTEvaluator(HeadState(feats, labels, W, c), HeadTTTConfig(lr=0.1, steps=1, k=21))
    bad = feats.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        HeadState(bad, labels, W, c)
    ev = HeadTTTEvaluator(HeadState(feats, labels, W, c), HeadTTTConfig(lr=0.1, steps=1, k=3), device="cpu")
    with pytest.raises(ValueError, match="test features has dimension 5"):
        ev({"point_id": np.arange(2), "feature": feats[:2, :5], "label": np.zeros(2, np.int64)})
