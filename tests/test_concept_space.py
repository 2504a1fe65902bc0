"""S8 / S9 components: the masked TTT engine against its autograd loop, the SAEs' invariants and training
(ramp, schedule, ghost loss, resume), JumpReLU's straight-through estimator, the O1 / O3 measurements, and
both studies end to end through Ray at smoke size."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from harness.errors import ConfigError
from harness.eval.concepts import (
    concept_recovery,
    fit_temperature,
    mean_cosine,
    ranked_probabilities,
    relative_tv_terms,
)
from harness.models.sae import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig, jump_relu, l0_count, top_k
from harness.models.sae_training import (
    JumpReLUTraining,
    SAETrainConfig,
    TopKTraining,
    ghost_loss,
    lr_factor,
    sparsity_at,
    train_jumprelu_sae,
    train_topk_sae,
)
from harness.ttt.masked import MaskedTTTConfig, batched_masked_ttt, mask_statistics, masked_ttt_one_point


def _sparse(g: torch.Generator, *shape: int, density: float = 0.15) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * (torch.rand(*shape, generator=g) < density)


# ------------------------------------------------------------------ masked TTT
@pytest.mark.parametrize("B,k,d1,C,steps,lr,penalty", [(5, 12, 40, 6, 60, 0.02, 0.2), (3, 1, 16, 3, 30, 0.05, 1e-3),
                                                        (4, 30, 64, 10, 80, 0.02, 0.05)])
def test_masked_engine_equals_one_point_loop(B, k, d1, C, steps, lr, penalty):
    g = torch.Generator().manual_seed(B * 100 + k)
    W, c = torch.randn(C, d1, generator=g), torch.randn(C, generator=g) * 0.3
    X, q = _sparse(g, B, k, d1), _sparse(g, B, d1)
    y = torch.randint(0, C, (B, k), generator=g)
    cfg = MaskedTTTConfig(lr=lr, steps=steps, k=k, penalty=penalty)
    logits, mask = batched_masked_ttt(W, c, X, y, q, cfg)
    for b in range(B):
        ref_logits, ref_mask = masked_ttt_one_point(W, c, X[b], y[b], q[b], cfg)
        assert torch.equal(ref_mask, mask[b])
        torch.testing.assert_close(logits[b], ref_logits, atol=1e-5, rtol=1e-5)
    # not a no-op: concepts were switched off, some stayed on, and the prediction moved off the global head's
    assert 0 < mask.sum() < mask.numel()
    assert (logits - (q @ W.T + c)).abs().max() > 1e-2


def test_masked_engine_points_do_not_share_state_and_unused_concepts_switch_off():
    g = torch.Generator().manual_seed(3)
    W, c = torch.randn(4, 20, generator=g), torch.zeros(4)
    X = _sparse(g, 3, 8, 20, density=0.3)
    X[:, :, 15:] = 0  # no neighbour activates concepts 15..19: only the penalty reaches them
    y, q = torch.randint(0, 4, (3, 8), generator=g), _sparse(g, 3, 20)
    cfg = MaskedTTTConfig(lr=0.02, steps=40, k=8, penalty=0.2)
    alone, mask_alone = batched_masked_ttt(W, c, X[:1], y[:1], q[:1], cfg)
    together, mask = batched_masked_ttt(W, c, X, y, q, cfg)
    torch.testing.assert_close(alone[0], together[0], atol=1e-6, rtol=0)
    assert torch.equal(mask_alone[0], mask[0])
    assert not mask[:, 15:].any()


def test_zero_steps_keep_every_concept_and_the_global_head():
    g = torch.Generator().manual_seed(0)
    W, c, q = torch.randn(3, 10, generator=g), torch.randn(3, generator=g), torch.randn(2, 10, generator=g)
    logits, mask = batched_masked_ttt(W, c, torch.randn(2, 4, 10, generator=g), torch.zeros(2, 4, dtype=torch.long), q,
                                      MaskedTTTConfig(steps=0, k=4))
    assert mask.all()
    torch.testing.assert_close(logits, q @ W.T + c)


def test_mask_statistics_are_the_set_sizes_of_section_e2():
    g = torch.Generator().manual_seed(5)
    X, q = _sparse(g, 4, 6, 30, density=0.2), _sparse(g, 4, 30, density=0.3)
    mask = torch.rand(4, 30, generator=g) < 0.4
    stats = mask_statistics(mask, X, q)
    for b in range(4):
        m = {j for j in range(30) if mask[b, j]}
        own = {j for j in range(30) if q[b, j] != 0}
        union = {j for i in range(6) for j in range(30) if X[b, i, j] != 0}
        assert stats["mask_size"][b] == len(m)
        assert stats["neighbourhood_concepts"][b] == len(union)
        assert stats["test_point_concepts_in_mask"][b] == len(own & m)
        assert stats["neighbourhood_concepts_in_mask"][b] == len(union & m)
        assert stats["test_point_concepts_in_neighbourhood"][b] == len(union & own)


# ------------------------------------------------------------------ top-k SAE
def test_top_k_keeps_exactly_the_k_largest_signed_values():
    pre = torch.randn(50, 12, generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 11):
        phi = top_k(pre, k)
        assert ((phi != 0).sum(1) == k).all()
        kept_min = torch.where(phi != 0, pre, torch.tensor(math.inf)).min(1).values
        dropped_max = torch.where(phi == 0, pre, torch.tensor(-math.inf)).max(1).values
        assert (kept_min > dropped_max).all()
        torch.testing.assert_close(phi[phi != 0], pre[phi != 0])  # values kept as they are: signed, no ReLU
    assert (top_k(pre, 11) < 0).any()  # with k close to d1, negative pre-activations are kept


def test_decoder_starts_as_the_encoders_transpose_with_unit_rows_and_stays_unit_after_training():
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(input_dim=8, width=32, k=3))
    torch.testing.assert_close(sae.W_dec, torch.nn.functional.normalize(sae.W_enc.T, dim=1))
    x = torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
    model, _ = train_topk_sae(x, TopKSAEConfig(8, 32, k=3), SAETrainConfig(lr=1e-2, batch_size=64, epochs=3,
                                                                           warmup_steps=2, schedule_steps=50),
                              TopKTraining(k_start=12, k_ramp_steps=5))
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(32))  # the stored rows, renormalised each step
    torch.testing.assert_close(model.decoder.norm(dim=1), torch.ones(32))
    assert not torch.allclose(model.W_dec, torch.nn.functional.normalize(model.W_enc.T, dim=1))  # it trained


def test_sparsity_ramp_and_learning_rate_schedule_follow_section_e3():
    ramp = TopKTraining()  # 128 -> k over 10,000 steps
    assert [sparsity_at(i, 16, ramp) for i in (0, 2_500, 5_000, 10_000, 50_000)] == [128, 100, 72, 16, 16]
    assert sparsity_at(7, 16, TopKTraining(k_ramp_steps=0)) == 16
    cfg = SAETrainConfig()  # warm-up 5,000, cosine horizon 1e5
    assert lr_factor(0, cfg) == pytest.approx(1 / 5000)
    assert lr_factor(2_499, cfg) == pytest.approx(0.5)
    assert lr_factor(5_000, cfg) == pytest.approx(1.0)
    assert lr_factor(52_500, cfg) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(100_000, cfg) == pytest.approx(0.0) and lr_factor(200_000, cfg) == pytest.approx(0.0)


def test_ghost_loss_reaches_only_dead_concepts():
    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(input_dim=6, width=10, k=2, dropout=0.0))
    x = torch.randn(20, 6)
    pre, _, recon = sae(x)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[2, 7]] = True
    ghost_loss(pre, dead, sae.decoder, (x - recon).detach()).backward()
    live = ~dead
    assert sae.W_enc.grad[:, live].abs().max() == 0 and sae.b_enc.grad[live].abs().max() == 0
    assert sae.W_dec.grad[live].abs().max() == 0
    assert sae.W_enc.grad[:, dead].abs().min() > 0 and sae.W_dec.grad[dead].abs().sum(1).min() > 0
    none = ghost_loss(pre, torch.zeros(10, dtype=torch.bool), sae.decoder, (x - recon).detach())
    assert none.item() == 0.0  # nothing dead: no loss (the residual alone is no loss)


def test_dead_concepts_follow_the_selection_frequency():
    sae = TopKSAE(TopKSAEConfig(input_dim=4, width=5, k=1))
    phi = torch.zeros(10_000, 5)
    phi[:9_998, 0], phi[9_998:, 1] = 1.0, 1.0  # concept 1: 2 of 10k samples (2e-4); 2, 3, 4: never
    sae.count_active(phi)
    assert sae.dead_concepts(1e-4).tolist() == [False, False, True, True, True]
    assert sae.dead_concepts(2e-4).tolist() == [False, True, True, True, True]  # "<= 1e-4" counts as dead (§E.3)


def _tiny_training(tmp_path, name, on_epoch=None, **changes):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(100, 6, generator=g), dim=1)
    cfg = SAETrainConfig(lr=1e-2, batch_size=20, epochs=3, warmup_steps=3, schedule_steps=40, checkpoint_every=3)
    return train_topk_sae(x, TopKSAEConfig(6, 16, k=2, **changes), cfg, TopKTraining(k_start=6, k_ramp_steps=8),
                          checkpoint=tmp_path / name, on_epoch=on_epoch)


class Killed(Exception):
    pass


def _kill_after_first_epoch(epoch, loss):
    if epoch == 0:
        raise Killed


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    whole, run = _tiny_training(tmp_path, "whole.pt")
    assert run.steps == 15 and run.resumed_from == 0
    with pytest.raises(Killed):  # killed at the end of epoch 0 (step 5); the last checkpoint is at step 3
        _tiny_training(tmp_path, "killed.pt", on_epoch=_kill_after_first_epoch)
    assert torch.load(tmp_path / "killed.pt", weights_only=False)["step"] == 3
    resumed, run = _tiny_training(tmp_path, "killed.pt")
    assert run.resumed_from == 3 and run.steps == 15
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    again, run = _tiny_training(tmp_path, "killed.pt")  # a finished checkpoint is the trained SAE
    assert run.resumed_from == 15 and torch.equal(again.W_enc, whole.W_enc)


def test_a_checkpoint_of_another_config_is_refused_naming_the_file_and_field(tmp_path):
    _tiny_training(tmp_path, "ckpt.pt")
    with pytest.raises(ConfigError, match=r"ckpt\.pt.*\n.*model\.dropout: checkpoint 0\.5, now 0\.25"):
        _tiny_training(tmp_path, "ckpt.pt", dropout=0.25)


def test_top_k_sae_recovers_most_true_concepts_of_synthetic_data():
    from harness.data.embeddings import l2_normalise
    from harness.data.synthetic import LRHConfig, make_lrh

    data = make_lrh(LRHConfig(d1=64, d2=16, s=2, n_train=3000, n_test=10, clusters=400, coefficient_jitter=0.5,
                              task="classification", seed=0))
    x = torch.from_numpy(l2_normalise(data.train_psi))
    train = SAETrainConfig(lr=1e-2, batch_size=256, epochs=30, warmup_steps=20, schedule_steps=10_000)
    ramp = TopKTraining(k_start=8, k_ramp_steps=50)
    model, _ = train_topk_sae(x, TopKSAEConfig(16, 64, k=2, dropout=0.0), train, ramp)
    best = concept_recovery(model.decoder.detach(), torch.from_numpy(data.projection.T.copy()))
    assert (best >= 0.9).sum() >= 40  # of 64 (49 when written); a random dictionary recovers none:
    random = concept_recovery(torch.randn(64, 16), torch.from_numpy(data.projection.T.copy()))
    assert (random >= 0.9).sum() <= 2


def test_training_data_with_nan_rows_or_the_wrong_dimension_is_refused_before_any_step():
    x = torch.randn(20, 6)
    x[[3, 11], 2] = float("nan")
    with pytest.raises(ConfigError, match=r"2 row\(s\) \(rows 3, 11\) hold NaN"):
        train_topk_sae(x, TopKSAEConfig(6, 12, k=2))
    with pytest.raises(ConfigError, match=r"shape \(20, 6\) do not fit the SAE's input_dim = 8"):
        train_topk_sae(torch.randn(20, 6), TopKSAEConfig(8, 12, k=2))
    with pytest.raises(ConfigError, match=r"TopKSAEConfig.k = 20 must be <= width = 12"):
        TopKSAEConfig(6, 12, k=20)
    with pytest.raises(ConfigError, match=r"k_start = 128 exceeds the SAE's width = 12"):
        train_topk_sae(torch.randn(20, 6), TopKSAEConfig(6, 12, k=2))


# ------------------------------------------------------------------ JumpReLU SAE
def test_jump_relu_and_l0_straight_through_gradients():
    eps, theta = 0.1, torch.tensor([0.5])
    v = (theta + torch.tensor([-0.6, -0.4, 0.0, 0.3, 0.6, 2.0]) * eps).reshape(6, 1).requires_grad_()
    t = theta.clone().requires_grad_()
    out = jump_relu(v, t, eps)
    assert out.flatten().tolist() == pytest.approx([0, 0, 0, *v.flatten()[3:].tolist()])  # v > θ kept, as it is
    out.sum().backward()
    assert t.grad.item() == pytest.approx(-(0.5 / eps) * 3)  # three of v within ε/2 of θ
    assert v.grad.flatten().tolist() == [0, 0, 0, 1, 1, 1]
    t.grad = None
    l0 = l0_count(v.detach(), t, eps)
    assert l0.flatten().tolist() == [0, 0, 0, 1, 1, 1]
    l0.sum().backward()
    assert t.grad.item() == pytest.approx(-(1 / eps) * 3)


def test_l0_penalty_raises_the_thresholds_and_lowers_the_active_concepts(mnist):
    from harness.models.sae_training import encode, sae_report

    images = mnist.train_x[:1000]
    cfg = SAETrainConfig(lr=2e-2, batch_size=200, epochs=6, warmup_steps=3, schedule_steps=1000)
    out = {}
    for reconstruction, weight in (("mean", 0.0), ("mean", 1e-2)):
        model, _ = train_jumprelu_sae(torch.from_numpy(images), JumpReLUSAEConfig(width=64, threshold_init=0.01), cfg,
                                      JumpReLUTraining(weight, reconstruction))
        assert isinstance(model, JumpReLUSAE) and (model.threshold > 0).all()
        phi, recon = encode(model, images)
        assert ((phi == 0) | (phi > model.threshold.detach().numpy())).all()  # 0, or above its threshold: positive
        out[reconstruction, weight] = (model.threshold.mean().item(), sae_report(images, phi, recon))
    assert out["mean", 0.0][0] < 0.01 < out["mean", 1e-2][0]  # the penalty alone pushes the thresholds up
    assert out["mean", 1e-2][1].active_concepts < out["mean", 0.0][1].active_concepts


# ------------------------------------------------------------------ O1 / O3 measurements
def test_fitted_temperature_recovers_a_known_one_and_minimises_the_kl():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 12, generator=g, dtype=torch.float64) * 3
    taus = torch.tensor([0.3, 0.8, 1.0, 1.7, 4.0, 0.05], dtype=torch.float64)
    target = torch.softmax(logits / taus.unsqueeze(1), -1)
    torch.testing.assert_close(fit_temperature(logits, target), taus.double(), rtol=1e-9, atol=0)
    noisy = torch.softmax(logits / 1.3 + 0.5 * torch.randn(6, 12, generator=g, dtype=torch.float64), -1)
    tau = fit_temperature(logits, noisy)
    assert ((tau > 0.1) & (tau < 10)).all()  # an inside optimum (a target unrelated to the logits gives τ -> inf)

    def kl(t):
        q = torch.log_softmax(logits.double() / t.unsqueeze(1), -1)
        return (noisy * (noisy.log() - q)).sum(-1)
    for factor in (0.97, 1.03):  # a local minimum on both sides
        assert (kl(tau) <= kl(tau * factor) + 1e-12).all()


def test_relative_tv_is_the_section_e1_formula():
    g = torch.Generator().manual_seed(1)
    logits_phi, logits_psi = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    p_psi_full = torch.softmax(logits_psi, -1)
    tau = torch.ones(50)
    p_phi, p_psi = ranked_probabilities(logits_phi, p_psi_full, tau, ranks=3)
    for b in range(50):  # ranks follow the Φ̂ model; Ψ̂'s probabilities are taken at the same classes
        order = torch.argsort(logits_phi[b], descending=True)[:3]
        torch.testing.assert_close(p_psi[b], p_psi_full[b, order].double())
        torch.testing.assert_close(p_phi[b], torch.softmax(logits_phi[b].double(), -1)[order])
    terms = relative_tv_terms(p_phi, p_psi)
    for i in range(3):
        expected = np.mean([abs(p_psi[b, i] - p_phi[b, i]) for b in range(50)]) / (
            0.5 * (p_psi[:, i].mean() + p_phi[:, i].mean()))
        assert terms[:, i].mean().item() == pytest.approx(float(expected))
    same = relative_tv_terms(p_phi, p_phi)
    assert same.abs().max() == 0


def test_mean_cosine_and_concept_recovery():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    nb = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [1.0, 1.0]]])
    torch.testing.assert_close(mean_cosine(q, nb), torch.tensor([0.5, (1 + 2**-0.5) / 2]))
    true = torch.eye(4)
    decoder = torch.cat([true[[2, 0]] + 0.05, torch.tensor([[1.0, 1.0, 0.0, 0.0]])])  # two close, one halfway
    best = concept_recovery(decoder, true)
    assert (best >= 0.9).tolist() == [True, False, True, False]
    assert best[1].item() == pytest.approx(2**-0.5)


# ------------------------------------------------------------------ the studies through Ray
def test_concept_space_study_end_to_end_through_ray(tmp_path, capsys):
    import studies.concept_space as study

    out = tmp_path / "s8"
    table = study.main(["--smoke-test", "--out-dir", str(out)])
    printed = capsys.readouterr().out
    for name in ("points.parquet", "summary.parquet", "fig2_neighbourhood_cosine.png", "fig3_relative_tv.png"):
        assert (out / name).stat().st_size > 1000, name
    for line in ("true concepts recovered", "Table 1", "O1:", "O2:", "O3:", "the paper's numbers beside ours"):
        assert line in printed, line
    ours = table.filter(pl.col("source") == "this run")
    for method, metric, space in (("global", "accuracy", "phi_hat"), ("masked_ttt", "accuracy", "phi_hat"),
                                  ("ttt", "accuracy", "psi_hat"), ("neighbourhood", "mean_cosine_phi_hat", "psi"),
                                  ("masked_ttt", "mask_size", "phi_hat"), ("sae", "recovered_concepts", None)):
        r = ours.filter((pl.col("method") == method) & (pl.col("metric") == metric) & pl.col("space").eq_missing(space))
        assert r.height == 1, (method, metric, space)
        assert r["ci_low"][0] <= r["mean"][0] <= r["ci_high"][0]
    assert sorted(ours.filter(pl.col("metric") == "rel_tv")["rank"].to_list()) == list(range(1, 11))
    paper = table.filter(pl.col("source") == "paper")
    assert paper.filter((pl.col("method") == "masked_ttt") & (pl.col("metric") == "accuracy"))["mean"][0] == 0.7264
    points = pl.read_parquet(out / "points.parquet")
    n = points.filter((pl.col("method") == "masked_ttt") & (pl.col("metric") == "accuracy")).height
    assert n == 40  # the smoke preset's test points
    mask = points.filter(pl.col("metric") == "mask_size")["value"]
    union = points.filter(pl.col("metric") == "neighbourhood_concepts")["value"]
    assert (mask <= 128 * 2).all() and (union >= 1).all()  # sizes are counts of the 256 concepts
    hp = json.loads(points.filter(pl.col("metric") == "recovered_concepts")["hparams"][0])
    assert hp["true_concepts"] == 128


@pytest.mark.slow
def test_mnist_sae_study_end_to_end_through_ray(tmp_path, capsys):
    import studies.mnist_sae as study

    out = tmp_path / "s9"
    table = study.main(["--smoke-test", "--out-dir", str(out)])
    printed = capsys.readouterr().out
    assert "masked SAE TTT" in printed and "E‖m‖₀" in printed
    ours = table.filter(pl.col("source") == "this run")
    acc = {(m, s): v for m, s, v in ours.filter(pl.col("metric") == "accuracy").select("method", "space", "mean")
           .iter_rows()}
    assert set(acc) == {("global", "cnn"), ("ttt", "cnn"), ("global", "phi_hat"), ("masked_ttt", "phi_hat")}
    assert acc[("ttt", "cnn")] > 0.5 and acc[("masked_ttt", "phi_hat")] > 0.3  # far above chance (0.1)
    assert (out / "summary.parquet").exists()



def test_concept_space_study_on_embedding_files_through_ray(tmp_path, capsys):
    """The real-input path: --embeddings TRAIN TEST (.npy + labels, as harness/features/clip.py writes them)."""
    import studies.concept_space as study
    from harness.data.synthetic import LRHConfig, make_lrh

    data = make_lrh(LRHConfig(d1=96, d2=24, s=3, n_train=2400, n_test=60, clusters=300, coefficient_jitter=0.5,
                              task="classification", classes=12, seed=4))
    files = []
    for name, x, y in (("train", data.train_psi, data.train_y), ("val", data.test_psi, data.test_y)):
        np.save(tmp_path / f"{name}.npy", x)
        np.save(tmp_path / f"{name}.labels.npy", y)
        files.append(str(tmp_path / f"{name}.npy"))
    out = tmp_path / "s8"
    table = study.main(["--embeddings", *files, "--holdout", "24", "--sae-epochs", "3", "--sae-k", "3",
                        "--sae-k-start", "12", "--sae-k-ramp-steps", "10", "--head-epochs", "3", "--ttt-steps", "10",
                        "--test-points", "30", "--out-dir", str(out)])
    printed = capsys.readouterr().out
    assert "precomputed embeddings: train" in printed and "true concepts recovered" not in printed  # none known
    ours = table.filter(pl.col("source") == "this run")
    sae = {m: v for m, v in ours.filter(pl.col("method") == "sae").select("metric", "mean").iter_rows()}
    assert set(sae) == {"fvu", "dead_fraction", "active_concepts"} and sae["active_concepts"] == 3.0
    points = pl.read_parquet(out / "points.parquet")
    assert set(points["dataset"].unique()) == {"embeddings:train"}
    assert points.filter(pl.col("metric") == "accuracy")["point_id"].n_unique() == 30
    assert set(points.filter(pl.col("method") == "sae")["model_size"].unique()) == {8 * 24}  # width 8 x d2
