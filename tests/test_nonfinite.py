"""Non-finite numbers never reach a result table: NaN/inf config floats are refused where the config is built,
a TTT run whose logits diverge to NaN/inf ends its trial with a message saying so (not a made-up prediction or a
NaN cross-entropy), and point_rows refuses any non-finite value as a last line of defence. Also S11 (theory_check)
refuses configurations outside its theory before work."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.data.synthetic import LRHConfig
from harness.errors import ConfigError
from harness.results.schema import RunInfo, point_rows
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator, prediction_metrics
from harness.ttt.linear import HeadTTTConfig

NAN, INF = math.nan, math.inf


# --- config floats ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "match"), [
    ({"lr": INF}, r"HeadTTTConfig\.lr must be > 0 and finite, got inf"),
    ({"lr": NAN}, r"HeadTTTConfig\.lr must be > 0 and finite, got nan"),
    ({"eps": NAN}, r"HeadTTTConfig\.eps must be > 0 and finite, got nan"),
    ({"weight_decay": INF}, r"HeadTTTConfig\.weight_decay must be >= 0 and finite, got inf"),
    ({"betas": (NAN, 0.999)}, r"HeadTTTConfig\.betas\[0\] must be in \[0, 1\), got nan"),
    ({"betas": (0.9, 1.0)}, r"HeadTTTConfig\.betas\[1\] must be in \[0, 1\), got 1\.0"),
])
def test_head_ttt_config_refuses_non_finite_floats(fields, match):
    with pytest.raises(ConfigError, match=match):
        HeadTTTConfig(**{"lr": 0.1, "steps": 5, "k": 3, **fields})


@pytest.mark.parametrize(("fields", "match"), [
    ({"noise": NAN}, r"LRHConfig\.noise must be >= 0 and finite, got nan"),
    ({"noise": INF}, r"LRHConfig\.noise must be >= 0 and finite, got inf"),
    ({"coefficient_jitter": NAN}, r"LRHConfig\.coefficient_jitter must be >= 0 and finite, got nan"),
    ({"coefficient_jitter": -0.5}, r"LRHConfig\.coefficient_jitter must be >= 0 and finite, got -0\.5"),
    ({"clusters": 0}, r"LRHConfig\.clusters must be >= 1 \(or None"),
])
def test_lrh_config_refuses_non_finite_floats(fields, match):
    with pytest.raises(ConfigError, match=match):
        LRHConfig(**fields)


# --- the last line of defence: result rows -------------------------------------------------------------------

def test_point_rows_refuses_non_finite_values_naming_study_method_metric_and_count():
    run = RunInfo(study="theory_check", dataset="lrh-d1=128", model_size=8, seed=0, k=20)
    with pytest.raises(ValueError, match=r"theory_check: method 'ttt', metric 'squared_error': 2 of 4 points .*NaN "
                                         r"or infinite.*model_size=8"):
        point_rows(run, "ttt", "squared_error", np.array([0.1, NAN, INF, 0.2]), np.arange(4))
    rows = point_rows(run, "ttt", "squared_error", np.array([0.1, 0.2]), np.arange(2))  # finite: written as before
    assert rows["value"].to_list() == [0.1, 0.2]


# --- a diverged TTT run ----------------------------------------------------------------------------------------

def _evaluate(lr: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feats, labels = (100 * rng.standard_normal((40, 6))).astype(np.float32), rng.integers(0, 3, 40)
    W, c = rng.standard_normal((3, 6)).astype(np.float32), np.zeros(3, np.float32)
    ev = HeadTTTEvaluator(HeadState(feats, labels, W, c), HeadTTTConfig(lr=lr, steps=4, k=5), device="cpu",
                          engine="exact")
    return ev({"point_id": np.arange(8), "feature": feats[:8] + 1, "label": np.zeros(8, np.int64)})


def test_diverged_ttt_makes_no_prediction_and_ends_with_a_message_naming_the_learning_rate():
    out = _evaluate(lr=1e36)  # finite, but its Adam steps overflow float32: the logits turn NaN
    # torch's argmax of an all-NaN row is 0: a made-up class, counted correct for every label-0 point
    assert (out["pred_ttt"] == -1).all() and np.isnan(out["ce_ttt"]).all()
    assert (out["pred_global"] >= 0).all()  # the global head is untouched
    with pytest.raises(ConfigError, match=r"TTT diverged: the adapted heads' logits are NaN or infinite, or too "
                                          r"large for a finite cross-entropy, for 8 of 8 test points \(engine exact\), "
                                          r"so .* no rows were written.*smaller --ttt-lr"):
        prediction_metrics(out)
    with pytest.raises(ConfigError, match=r"lr 1e\+36, 4 steps, k 5"):  # the values, where the caller gives them
        prediction_metrics(out, ttt=HeadTTTConfig(lr=1e36, steps=4, k=5))
    fine = prediction_metrics(_evaluate(lr=10.0))  # large but not diverged: rows as usual
    assert all(np.isfinite(values).all() for _, _, values in fine)


def test_mnist_trial_whose_ttt_diverges_on_some_points_ends_without_rows(mnist, tmp_path, monkeypatch):
    """An engine whose logits overflow on every third point (as a half-precision state can): the trial names the
    count and --ttt-lr instead of returning rows with a made-up class and a NaN cross-entropy."""
    import torch

    import harness.ttt.evaluator as evaluator
    from harness.trials.mnist import MnistTrialConfig, mnist_trial

    exact = evaluator.HEAD_TTT_ENGINES.get("exact")

    def overflowing(*args, **kwargs):
        logits = exact(*args, **kwargs).clone()
        logits[::3, 0] = torch.inf
        logits[::3, 1] = -torch.inf
        return logits

    monkeypatch.setattr(evaluator.HEAD_TTT_ENGINES, "get", lambda name: overflowing)
    cfg = MnistTrialConfig(model_size=280, epochs=1, fraction=0.05, test_points=30, ttt_lr=0.05, ttt_steps=3,
                           ttt_k=10, majority_k=5, device="cpu", cache_dir=str(tmp_path / "features"))
    with pytest.raises(ConfigError, match=r"TTT diverged: .* for 10 of 30 test points.*--ttt-lr"):
        mnist_trial(cfg, mnist)


# --- S11: configurations outside the theory -----------------------------------------------------------------

@pytest.mark.parametrize(("args", "match"), [
    (["--noise", "nan"], r"--noise must be >= 0 and finite, got nan"),
    (["--noise", "-0.1"], r"--noise must be >= 0 and finite, got -0\.1"),
    (["--k", "100", "--points-per-cluster", "60"], r"--points-per-cluster 60 must exceed every --k \(got 100\)"),
    (["--k", "20", "60", "--points-per-cluster", "60"], r"--points-per-cluster 60 must exceed every --k \(got 60\)"),
    (["--points-per-cluster", "0"], r"--points-per-cluster 0 must exceed every --k \(got 20\)"),
    (["--d2", "8", "256"], r"--d2 256 exceeds --d1 128"),
    (["--d1", "64", "--d2", "64"], None),  # d2 = d1 is covered (Remark 9: the global model is exact)
    (["--s", "4", "--d1", "2"], r"--s 4 exceeds --d1 2"),
    (["--k", "0"], r"--k must be >= 1, got \[0\]"),
])
def test_theory_check_refuses_configs_outside_its_theory_before_work(args, match, tmp_path, monkeypatch, capsys):
    """The options' own check, reported by the parser (exit 2, the message in a box on stderr) before any work."""
    import re

    import studies.theory_check as study

    def no_work(*_, **__):
        raise AssertionError("the study started work")

    monkeypatch.setattr(study, "run_study", no_work)
    out = tmp_path / "out"
    if match is None:
        with pytest.raises(AssertionError, match="started work"):
            study.main([*args, "--out-dir", str(out)])
        return
    with pytest.raises((ConfigError, SystemExit)) as info:
        study.main([*args, "--out-dir", str(out)])
    if isinstance(info.value, SystemExit):
        assert info.value.code == 2
        text = capsys.readouterr().err
    else:
        text = str(info.value)
    assert re.search(match, " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())), text
    assert not out.exists()


def test_concept_space_trial_whose_masked_ttt_diverges_ends_without_rows(tmp_path, monkeypatch):
    """S8: masked-TTT logits NaN for some points (an engine made to overflow) end the trial naming the column and
    the count; before, argmax counted the NaN rows as class 0 (a made-up accuracy)."""
    import torch

    from harness.trials import concept_space
    from harness.trials.concept_space import concept_space_trial
    from harness.ttt.evaluator import check_predictions
    from test_sae_cache_identity import _s8_trial

    masked = concept_space.batched_masked_ttt

    def overflowing(*args, **kwargs):
        logits, mask = masked(*args, **kwargs)
        return torch.where(torch.arange(logits.shape[0]).unsqueeze(1) % 3 == 0, torch.nan, logits), mask

    monkeypatch.setattr(concept_space, "batched_masked_ttt", overflowing)
    with pytest.raises(ConfigError, match=r"concept-space trial \(seed 0\): logits NaN or infinite .*pred_masked for "
                                          r"4 of 10 test points"):
        concept_space_trial(_s8_trial(tmp_path, tmp_path / "sae.pt"))
    check_predictions({"pred_majority": np.array([-1, -1]), "pred_ttt": np.array([0, 1])}, "no vote asked: fine")
