"""--engine auto: the table of which engine runs on which device (a pure function, tested without a GPU), its
resolution where the TTT computes (CPU: exact, and the rows say so), and impossible requests refused before work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import ConfigError
from harness.trials.mnist import check_engine, check_engine_on_device
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator
from harness.ttt.head_engines import (
    AUTO_BY_CAPABILITY,
    HEAD_TTT_ENGINES,
    auto_head_engine,
    fits_fp16,
    head_engine_choices,
    resolve_head_engine,
)
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt


@pytest.mark.parametrize(("device", "capability", "fp16_inputs", "triton", "engine"), [
    ("cpu", None, True, True, "exact"),
    ("mps", None, True, True, "exact"),
    ("cuda", (9, 0), True, True, "fused-fp16-state"),  # H100 / H200: the agreement check passed there
    ("cuda", (9, 0), False, True, "fused-tf32"),  # inputs beyond fp16's range: an fp32-range fused engine
    ("cuda", (9, 0), True, False, "exact"),  # no triton: no fused engine
    ("cuda", (8, 0), True, True, "exact"),  # A100: no agreement check recorded
    ("cuda", (8, 9), True, True, "exact"),
    ("cuda", (10, 0), True, True, "exact"),  # Blackwell: likewise
    ("cuda", (12, 0), False, True, "exact"),
])
def test_auto_table(device, capability, fp16_inputs, triton, engine):
    assert auto_head_engine(device, capability, fp16_inputs=fp16_inputs, triton=triton) == engine


def test_auto_picks_only_registered_engines_and_is_no_engine_itself():
    assert all(name in HEAD_TTT_ENGINES for picks in AUTO_BY_CAPABILITY.values() for name in picks)
    assert "auto" not in HEAD_TTT_ENGINES and head_engine_choices()[0] == "auto"
    assert set(head_engine_choices()[1:]) == set(HEAD_TTT_ENGINES.names())


def test_resolution_on_the_cpu_and_impossible_requests():
    assert resolve_head_engine("auto", "cpu") == "exact"
    assert resolve_head_engine("exact", torch.device("cpu")) == "exact"
    for name in ("fused-fp16-state", "fused-tf32", "fused-ieee"):
        with pytest.raises(ConfigError, match=rf"engine '{name}' is a Triton GPU engine, but the TTT computes on the "
                                              r"CPU; set engine \(--engine\) to 'auto' or 'exact'"):
            resolve_head_engine(name, "cpu")
    with pytest.raises(ConfigError, match=r"engine must be one of \['auto', 'exact', .*got 'fused-fp8'"):
        resolve_head_engine("fused-fp8", "cpu")
    check_engine("auto")
    check_engine_on_device("auto", "cpu")
    check_engine_on_device("auto", None)
    with pytest.raises(ConfigError, match=r"engine 'fused-fp16' is a Triton GPU engine.*device cpu.*--engine"):
        check_engine_on_device("fused-fp16", "cpu")


def test_fits_fp16():
    x = np.ones((3, 4), np.float32)
    assert fits_fp16(x, np.zeros((0, 4), np.float32)) and fits_fp16(x * 60000)
    assert not fits_fp16(x, x * -60001) and not fits_fp16(x * 1e6)


def _state(rng):
    feats, labels = rng.standard_normal((120, 6)).astype(np.float32), rng.integers(0, 4, 120)
    W, c = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    return HeadState(feats, labels, W, c)


def test_evaluator_resolves_auto_to_exact_on_the_cpu_and_says_so():
    rng = np.random.default_rng(0)
    state, cfg = _state(rng), HeadTTTConfig(lr=0.05, steps=10, k=12)
    q = rng.standard_normal((9, 6)).astype(np.float32)
    ev = HeadTTTEvaluator(state, cfg, device="cpu")  # engine: the default, auto
    assert ev.engine_name == "exact" and ev.engine is batched_head_ttt
    out = ev({"point_id": np.arange(9), "feature": q, "label": np.zeros(9, np.int64)})
    assert out["engine"].tolist() == ["exact"] * 9
    exact = HeadTTTEvaluator(state, cfg, device="cpu", engine="exact")(
        {"point_id": np.arange(9), "feature": q, "label": np.zeros(9, np.int64)})
    np.testing.assert_array_equal(out["pred_ttt"], exact["pred_ttt"])
    np.testing.assert_array_equal(out["ce_ttt"], exact["ce_ttt"])


def test_evaluator_refuses_a_fused_engine_on_the_cpu_before_work(monkeypatch):
    import harness.ttt.evaluator as evaluator

    def no_index(*_a, **_k):
        raise AssertionError("the index was built before the engine was checked")

    monkeypatch.setattr(evaluator, "build_retriever", no_index)
    with pytest.raises(ConfigError, match=r"engine 'fused-fp16-state' is a Triton GPU engine.*--engine"):
        HeadTTTEvaluator(_state(np.random.default_rng(0)), HeadTTTConfig(lr=0.05, steps=10, k=12), device="cpu",
                         engine="fused-fp16-state")


def test_resolution_on_a_gpu_reads_its_capability_and_the_operands_range(monkeypatch):
    """No GPU here: the CUDA capability query is replaced; the rest is the code a GPU process runs."""
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    small, large = np.ones((5, 3), np.float32), np.full((5, 3), 7e4, np.float32)
    assert resolve_head_engine("auto", "cuda:0", (small, small)) == "fused-fp16-state"
    assert resolve_head_engine("auto", "cuda", (small, large)) == "fused-tf32"  # features beyond fp16's range
    assert resolve_head_engine("fused-bf16", "cuda") == "fused-bf16"  # a named engine is never replaced
    capability["value"] = (8, 0)
    assert resolve_head_engine("auto", "cuda", (small, small)) == "exact"
