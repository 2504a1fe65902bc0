"""The fused Triton fast path (harness/ttt/fused) computes batched_head_ttt's function.

On CPU `fused_head_ttt` falls back to the exact torch engine; the Triton kernels themselves are checked
under Triton's numpy interpreter (TRITON_INTERPRET=1, in a subprocess so the flag is set before import; the
cases are tests/fused_interpreted.py), against batched_head_ttt in float64: the fp32 ("ieee") kernels land as
close to it as the fp32 torch engine does, on shapes with several tiles and masked edges, with weight decay;
the fp16 designs as close to a float64 emulation of their own roundings as its float32 run is.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from harness.ttt.fused import fused_head_ttt
from harness.ttt.head_engines import HEAD_TTT_ENGINES
from harness.ttt.linear import HeadTTTConfig, head_ttt_one_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_fallback_matches_the_one_point_loop():
    """Every engine on CPU tensors (the fused ones fall back to torch there) against the independent
    reference: head_ttt_one_point (nn.Linear, autograd, torch.optim.Adam), one point at a time."""
    g = torch.Generator().manual_seed(0)
    B, k, C, d = 3, 12, 7, 9
    W, c = torch.randn(C, d, generator=g), torch.randn(C, generator=g)
    X, y, q = torch.randn(B, k, d, generator=g), torch.randint(0, C, (B, k), generator=g), torch.randn(B, d, generator=g)
    cfg = HeadTTTConfig(lr=0.05, steps=5, k=k, weight_decay=0.01)
    loop = [head_ttt_one_point(W, c, X[b], y[b], q[b], cfg) for b in range(B)]
    ref_logits, ref_W, ref_c = (torch.stack(parts) for parts in zip(*loop, strict=True))
    assert float((ref_W - W).abs().min()) > 1e-3  # TTT moved every weight: returning the global head fails
    names = ("exact", "fused-ieee", "fused-tf32x3", "fused-tf32", "fused-bf16", "fused-fp16", "fused-fp16-state")
    assert sorted(names) == sorted(HEAD_TTT_ENGINES.names())
    for name in names:
        logits, heads_W, heads_c = HEAD_TTT_ENGINES.get(name)(W, c, X, y, q, cfg, True)
        assert logits.shape == (B, C) and heads_W.shape == (B, C, d) and heads_c.shape == (B, C)
        torch.testing.assert_close(heads_W, ref_W, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: W: {m}")
        torch.testing.assert_close(heads_c, ref_c, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: c: {m}")
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: logits: {m}")
        torch.testing.assert_close(HEAD_TTT_ENGINES.get(name)(W, c, X, y, q, cfg), logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision"):
        fused_head_ttt(W, c, X, y, q, cfg, precision="fp8")


TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


def _interpret(case: str) -> str:
    """Run one case of tests/fused_interpreted.py in a subprocess under Triton's interpreter; it must print OK."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fused_interpreted.py"), case], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
    return res.stdout


@TRITON
def test_triton_kernels_in_interpreter_match_torch():
    """The three-kernel design's fp32 kernels against float64 batched_head_ttt (see fused_interpreted.three_kernel)."""
    _interpret("three_kernel")


@TRITON
def test_fp16_flash_kernels_match_an_fp16_emulation():
    """The fp16 flash design against a float64 emulation of its roundings (fused_interpreted.flash)."""
    _interpret("flash")


@TRITON
def test_fp16_split_kernels_match_an_fp16_emulation():
    """The split design, with TMA stores, an fp16 gradient buffer and fp16 Adam state ("fp16-state"), against the
    float64 emulation of its roundings; overflowing references recomputed by flash (fused_interpreted.split)."""
    _interpret("split")


def test_flash_blocks_reject_bad_fields():
    from harness.ttt.fused import FlashBlocks

    for kw, msg in (({"design": "rowz"}, "design"), ({"design": "split", "bd": 96}, "bd"),
                    ({"state": "fp8"}, "state"), ({"state": "fp16"}, "split")):
        with pytest.raises(ValueError, match=msg):
            FlashBlocks(**kw)


def test_fp16_defaults_and_gradient_buffer_range():
    """The fp16 modes default to the split design (no TMA off Hopper); "fp16-state" alone keeps Adam's state in
    fp16; the fp16 gradient buffer is used only while k·max|feats| fits fp16."""
    from harness.ttt.fused.blocks import default_blocks, fp16_blocks_for
    from harness.ttt.fused.dispatch import g_fp16_fits

    b16, bs = default_blocks("fp16", "cpu"), default_blocks("fp16-state", "cpu")
    assert (b16.design, b16.state, b16.f_tma, b16.g_fp16) == ("split", "fp32", False, True)
    assert bs.state == "fp16" and fp16_blocks_for("fp16", bs).state == "fp32"
    assert fp16_blocks_for("fp16-state", b16) == bs
    assert g_fp16_fits(bs, 600, 99.0) and not g_fp16_fits(bs, 600, 101.0)
    assert g_fp16_fits(fp16_blocks_for("fp16", b16.__class__(design="split")), 600, 1e4)  # fp32 buffer: no limit
    wd = HeadTTTConfig(lr=0.02, steps=50, k=600, weight_decay=0.1)
    assert g_fp16_fits(b16, 600, 90.0, wd, 100.0) and not g_fp16_fits(bs, 600, 90.0, wd, 100.0)


def _nbytes(obj) -> int:
    """Bytes of the storages behind a buffers dataclass (nested dataclasses included)."""
    import dataclasses

    total = 0
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        total += _nbytes(v) if dataclasses.is_dataclass(v) else v.untyped_storage().nbytes()
    return total


def test_each_mode_allocates_only_its_buffers():
    """At the ImageNet shape (B 256, k 600, C 1000, d 512; on the meta device: nothing is allocated), fp16-state
    holds no fp32 m, v and no fp16 copies of W (1.57 GB, which linear_fused.py allocated unused in that mode),
    and fp16 with fp32 state no half state; neither holds the flash design's fp32 gradient buffer. Every byte is
    accounted for by the buffers' documented shapes."""
    from harness.ttt.fused.blocks import default_blocks
    from harness.ttt.fused.buffers import Fp32AdamState, HalfAdamState
    from harness.ttt.fused.dispatch import fp16_buffers

    B, k, C, d = 256, 600, 1000, 512
    state16 = fp16_buffers(B, k, C, d, default_blocks("fp16-state", "cpu"), "meta")
    state32 = fp16_buffers(B, k, C, d, default_blocks("fp16", "cpu"), "meta")
    assert isinstance(state16.state, HalfAdamState) and isinstance(state32.state, Fp32AdamState)
    common = (B * C * d * 4 + 4 * B * C * 4 + 3 * B * 608 * 4 + B * 4  # W, c twice, m_c, v_c; lse, ey, xmax; ovf
              + B * C * d * 2 + B * k * 1024 * 2 + B * k * 640 * 2)  # fp16 k·∇W; E, XB padded to 128 columns
    assert _nbytes(state16) == common + 4 * B * C * d * 2  # hi, lo, k·m, k·√v
    assert _nbytes(state32) == common + 2 * B * C * d * 4 + 2 * B * C * d * 2  # m, v; two fp16 copies of W
    assert _nbytes(state32.state) == 1_572_864_000 and _nbytes(state16.state) == 1_048_576_000


@TRITON
@pytest.mark.slow
def test_fp16_state_kernels_compile_for_hopper_without_spills():
    """Every kernel of fused-fp16-state compiles for sm_90 on this GPU-less machine (benchmarks/tuning/
    compile_check.py), on tensor cores where it multiplies matrices, with no register spills (~1 min)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "tuning"))
    from compile_check import compile_all

    got = {s.kernel: s for _, s in compile_all(["fp16-state"], 90)}
    assert set(got) == {"lse_kernel", "split_forward_kernel", "split_label_kernel", "split_grad_kernel",
                        "adam_half_kernel"}
    assert all(got[k].matrix == "wgmma" for k in ("lse_kernel", "split_forward_kernel", "split_grad_kernel"))
    assert all(s.stack == 0 and s.local == 0 and s.registers <= 255 for s in got.values()), got
