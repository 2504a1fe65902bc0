"""The fused Triton fast path (harness/ttt/linear_fused.py) computes batched_head_ttt's function.

On CPU `fused_head_ttt` falls back to the exact torch engine; the Triton kernels themselves are checked
under Triton's numpy interpreter (TRITON_INTERPRET=1, in a subprocess so the flag is set before import),
against batched_head_ttt in float64: the fp32 ("ieee") kernels land as close to it as the fp32 torch
engine does, on shapes with several tiles and masked edges, with weight decay.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.ttt.linear import HeadTTTConfig, batched_head_ttt
from harness.ttt.linear_fused import HEAD_TTT_ENGINES, fused_head_ttt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_fallback_is_the_exact_engine():
    g = torch.Generator().manual_seed(0)
    B, k, C, d = 3, 12, 7, 9
    W, c = torch.randn(C, d, generator=g), torch.randn(C, generator=g)
    X, y, q = torch.randn(B, k, d, generator=g), torch.randint(0, C, (B, k), generator=g), torch.randn(B, d, generator=g)
    cfg = HeadTTTConfig(lr=0.02, steps=5, k=k)
    ref = batched_head_ttt(W, c, X, y, q, cfg)
    for name in ("exact", "fused-tf32", "fused-bf16", "fused-ieee", "fused-tf32x3"):
        assert torch.equal(HEAD_TTT_ENGINES.get(name)(W, c, X, y, q, cfg), ref)
    with pytest.raises(ValueError, match="precision"):
        fused_head_ttt(W, c, X, y, q, cfg, precision="fp8")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_in_interpreter_match_torch():
    code = textwrap.dedent("""
        import torch
        from harness.ttt.linear import HeadTTTConfig, batched_head_ttt
        from harness.ttt.linear_fused import FusedBlocks, fused_head_ttt
        g = torch.Generator().manual_seed(0)
        B, k, C, d = 2, 70, 150, 140
        W, c = torch.randn(C, d, generator=g) * 0.1, torch.randn(C, generator=g) * 0.1
        X = torch.nn.functional.normalize(torch.randn(B, k, d, generator=g), dim=-1)
        y, q = torch.randint(0, C, (B, k), generator=g), torch.randn(B, d, generator=g)
        cfg = HeadTTTConfig(lr=0.02, steps=4, k=k, weight_decay=0.01)
        r64, W64, c64 = batched_head_ttt(W.double(), c.double(), X.double(), y, q.double(), cfg, return_heads=True)
        r32, W32, _ = batched_head_ttt(W, c, X, y, q, cfg, return_heads=True)
        tol = 4 * float((W32.double() - W64).abs().max()) + 1e-6
        for blocks in (FusedBlocks(), FusedBlocks(x_t=False, grad_bc=64, fwd_bn=64, d_bc=32, d_bk=16)):
            out, FW, Fc = fused_head_ttt(W, c, X, y, q, cfg, True, precision="ieee", interpret=True, blocks=blocks)
            assert float((FW.double() - W64).abs().max()) <= tol, (float((FW.double() - W64).abs().max()), tol)
            assert float((Fc.double() - c64).abs().max()) <= 1e-5
            assert torch.equal(out.argmax(1), r64.argmax(1))
            out, FW, _ = fused_head_ttt(W, c, X, y, q, cfg, True, precision="bf16", interpret=True, blocks=blocks)
            assert torch.isfinite(FW).all() and float((out.double() - r64).abs().max()) < 0.5
        print("OK")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
