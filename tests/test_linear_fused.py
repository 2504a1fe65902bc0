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

from harness.ttt.linear import HeadTTTConfig, batched_head_ttt, head_ttt_one_point
from harness.ttt.linear_fused import HEAD_TTT_ENGINES, fused_head_ttt

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


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_in_interpreter_match_torch():
    code = textwrap.dedent("""
        from harness.ttt.linear import batched_head_ttt
        from harness.ttt.linear_fused import FusedBlocks, fused_head_ttt
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
    _interpret(code, emulation=False)


EMULATION = textwrap.dedent("""
    import torch
    from harness.ttt.linear import HeadTTTConfig


    def emulate(W, c, X, y, cfg, dt, design="flash", g16=False, state16=False):
        \"\"\"The fp16 engines' arithmetic in torch (dt: float64 or float32), rounding where the kernels round.

        flash: W, X rounded to fp16 as dot operands, P = softmax - onehot rounded to fp16 before the ∇W dot.
        split: E = exp(S - r) with r the previous step's lse (step 1: this step's), rounded to fp16 with the
        label entry E - L; XB = X / L rounded to fp16; ∇W = Eᵀ XB / k (g16: Eᵀ XB rounded to fp16 first);
        state16: k·m and k·sqrt(v) rounded to fp16, W kept as hi + lo (fp16 + fp16).\"\"\"
        W, c = W.to(dt), c.to(dt)
        Xh = X.half().to(dt)
        b1, b2 = cfg.betas
        B, k, _ = X.shape
        C = W.shape[0]
        W = W.expand(B, *W.shape).clone()
        c = c.expand(B, *c.shape).clone()
        m, v, mc, vc = (torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(c), torch.zeros_like(c))
        onehot = torch.nn.functional.one_hot(y, C).to(dt)
        r = None
        for t in range(1, cfg.steps + 1):
            S = Xh @ W.half().to(dt).transpose(1, 2) + c[:, None, :]
            if design == "flash":
                P = torch.softmax(S, -1) - onehot
                g = P.half().to(dt).transpose(1, 2) @ Xh / k
                gc = P.sum(1) / k
            else:
                r = torch.logsumexp(S, -1) if r is None else r
                e = torch.exp(S - r[..., None])
                tot = e.sum(-1)
                E = torch.where(onehot > 0, e - tot[..., None], e).half().to(dt)
                g = E.transpose(1, 2) @ (Xh / tot[..., None]).half().to(dt)
                g = (g.half().to(dt) if g16 else g) / k
                gc = (E * (1 / tot).half().to(dt)[..., None]).sum(1) / k
                r = r + torch.log(tot)
            g = g + cfg.weight_decay * W
            gc = gc + cfg.weight_decay * c
            pairs = ((c, gc, mc, vc),) if state16 else ((W, g, m, v), (c, gc, mc, vc))
            for p, gp, mm, vv in pairs:
                mm.lerp_(gp, 1 - b1)
                vv.mul_(b2).addcmul_(gp, gp, value=1 - b2)
                p.sub_(cfg.lr / (1 - b1 ** t) * mm / (vv.sqrt() / (1 - b2 ** t) ** 0.5 + cfg.eps))
            if state16:
                gk = g * k
                mk = (1 - b1) * gk if t == 1 else m * k + (1 - b1) * (gk - m * k)
                sk = ((1 - b2) * gk * gk if t == 1 else (v.sqrt() * k) ** 2 * b2 + (1 - b2) * gk * gk).sqrt()
                Wn = W - cfg.lr / (1 - b1 ** t) * mk / (sk / (1 - b2 ** t) ** 0.5 + k * cfg.eps)
                m, v = mk.half().to(dt) / k, (sk.half().to(dt) / k) ** 2
                hi = Wn.half().to(dt)
                W = hi + (Wn - hi).half().to(dt)
        return W, c
""")

FIXTURE = textwrap.dedent("""
    import torch
    from harness.ttt.linear import HeadTTTConfig

    g = torch.Generator().manual_seed(0)
    B, k, C, d = 2, 70, 150, 140  # several tiles of every kernel, masked edges
    W, c = torch.randn(C, d, generator=g) * 0.1, torch.randn(C, generator=g) * 0.1
    X = torch.nn.functional.normalize(torch.randn(B, k, d, generator=g), dim=-1)
    y, q = torch.randint(0, C, (B, k), generator=g), torch.randn(B, d, generator=g)
    cfg = HeadTTTConfig(lr=0.02, steps=4, k=k, weight_decay=0.01)
""")


def _interpret(code: str, emulation: bool = True) -> str:
    """Run `code` after FIXTURE (and EMULATION's definitions, unless emulation=False) in a subprocess under
    Triton's interpreter; it must print OK."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = (EMULATION if emulation else "") + FIXTURE + textwrap.dedent(code)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
    return res.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fp16_flash_kernels_match_an_fp16_emulation():
    """The fp16 flash design (lse kernel, gradient kernel, streaming Adam; and the in-kernel Adam variant)
    equals a float64 torch emulation of the same roundings as closely as that emulation run in float32 does;
    bad ranges are refused."""
    _interpret("""
        from harness.ttt.linear_fused import FlashBlocks, fused_head_ttt
        from harness.ttt.linear import batched_head_ttt
        W64, c64 = emulate(W, c, X, y, cfg, torch.float64)
        W32, _ = emulate(W, c, X, y, cfg, torch.float32)
        tol = 4 * float((W32.double() - W64).abs().max()) + 1e-6
        _, Wx, _ = batched_head_ttt(W.double(), c.double(), X.double(), y, q.double(), cfg, return_heads=True)
        assert float((Wx - W64).abs().max()) > 10 * tol  # the check below can tell fp16 from exact arithmetic
        small = dict(lse_bm=32, lse_bn=64, lse_bk=32, bc=64, bkk=32, adam_block=256)
        for blocks in (FlashBlocks(**small), FlashBlocks(**small, separate_adam=False)):
            out, FW, Fc = fused_head_ttt(W, c, X, y, q, cfg, True, precision="fp16", interpret=True, blocks=blocks)
            err = float((FW.double() - W64).abs().max())
            assert err <= tol, (blocks, err, tol)
            assert float((Fc.double() - c64).abs().max()) <= 1e-5
            ref = torch.einsum("bd,bcd->bc", q.double(), W64) + c64
            assert torch.equal(out.argmax(1), ref.argmax(1))
        try:
            fused_head_ttt(W, c, X * 1e6, y, q, cfg, precision="fp16", interpret=True)
        except ValueError as e:
            assert "feats" in str(e) and "fp16" in str(e), e
        else:
            raise AssertionError("out-of-range fp16 input accepted")
        print("OK", tol)
    """)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fp16_split_kernels_match_an_fp16_emulation():
    """The split design (softmax rows against the previous step's lse, one GEMM Eᵀ XB, streaming or fused
    Adam; TMA stores; fp16 gradient buffer; fp16 optimiser state = precision "fp16-state") equals the float64
    emulation of its own roundings within the float32 emulation's distance, while the exact engine and the
    other roundings are measurably farther; a reference that leaves fp16's range is recomputed (flash)."""
    _interpret("""
        import dataclasses, warnings
        from harness.ttt.linear import batched_head_ttt
        from harness.ttt.linear_fused import FlashBlocks, fused_head_ttt
        ref = {}
        for key in ((False, False), (True, False), (True, True)):
            W64, c64 = emulate(W, c, X, y, cfg, torch.float64, "split", *key)
            W32, _ = emulate(W, c, X, y, cfg, torch.float32, "split", *key)
            ref[key] = (W64, c64, 4 * float((W32.double() - W64).abs().max()) + 1e-6)
        _, Wx, _ = batched_head_ttt(W.double(), c.double(), X.double(), y, q.double(), cfg, return_heads=True)
        assert float((Wx - ref[(False, False)][0]).abs().max()) > 5 * ref[(False, False)][2]
        assert float((ref[(True, False)][0] - ref[(False, False)][0]).abs().max()) > 2 * ref[(False, False)][2]
        small = FlashBlocks(design="split", lse_bm=32, lse_bn=64, lse_bk=32, f_bm=32, f_bn=64, f_bk=32, bc=32,
                            bd=64, bkk=32, adam_block=256)
        variants = [(small, "fp16"), (dataclasses.replace(small, separate_adam=False, bc=64), "fp16"),
                    (dataclasses.replace(small, f_tma=True, g_fp16=True), "fp16"),
                    (dataclasses.replace(small, g_fp16=True, state="fp16"), "fp16-state")]
        for blocks, prec in variants:
            W64, c64, tol = ref[(blocks.g_fp16, blocks.state == "fp16")]
            out, FW, Fc = fused_head_ttt(W, c, X, y, q, cfg, True, precision=prec, interpret=True, blocks=blocks)
            err = float((FW.double() - W64).abs().max())
            assert err <= tol, (blocks, err, tol)
            assert float((Fc.double() - c64).abs().max()) <= 1e-5
            assert torch.equal(out.argmax(1), (torch.einsum("bd,bcd->bc", q.double(), W64) + c64).argmax(1))
        # a step large enough to move the log-sum-exp by more than fp16's range: the point is redone by flash
        big = HeadTTTConfig(lr=3.0, steps=3, k=k)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, FW, _ = fused_head_ttt(W, c, X * 20, y, q, big, True, precision="fp16", interpret=True, blocks=small)
        assert any("recomputed by the flash design" in str(w.message) for w in caught)
        fo, FWf, _ = fused_head_ttt(W, c, X * 20, y, q, big, True, precision="fp16", interpret=True,
                                    blocks=FlashBlocks())
        assert torch.equal(FW, FWf) and torch.equal(out, fo)
        # X / L out of fp16's range while |lse - r| stays small (large features, a falling lse): flagged too
        Wz, cz = torch.zeros(3, 16), torch.tensor([0.0, 20.0, 0.0])
        Xz = 10 + 0.1 * torch.rand(1, 8, 16, generator=g)
        yz, qz, cz_cfg = torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 16), HeadTTTConfig(lr=10 / 161, steps=2, k=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, FW, _ = fused_head_ttt(Wz, cz, Xz, yz, qz, cz_cfg, True, precision="fp16", interpret=True,
                                        blocks=dataclasses.replace(small, g_fp16=True))
        assert any("recomputed by the flash design" in str(w.message) for w in caught)
        assert torch.isfinite(FW).all() and torch.isfinite(out).all()
        try:
            fused_head_ttt(W, c, X, y + C, q, cfg, precision="fp16", interpret=True, blocks=small)
        except ValueError as e:
            assert "labels" in str(e), e
        else:
            raise AssertionError("labels outside the head's classes accepted")
        print("OK")
    """)


def test_flash_blocks_reject_bad_fields():
    from harness.ttt.linear_fused import FlashBlocks

    for kw, msg in (({"design": "rowz"}, "design"), ({"design": "split", "bd": 96}, "bd"),
                    ({"state": "fp8"}, "state"), ({"state": "fp16"}, "split")):
        with pytest.raises(ValueError, match=msg):
            FlashBlocks(**kw)


def test_fp16_defaults_and_gradient_buffer_range():
    """The fp16 modes default to the split design (no TMA off Hopper); "fp16-state" alone keeps Adam's state in
    fp16; the fp16 gradient buffer is used only while k·max|feats| fits fp16."""
    from harness.ttt.linear_fused import _g_fp16_fits, _state_for, default_blocks

    b16, bs = default_blocks("fp16", "cpu"), default_blocks("fp16-state", "cpu")
    assert (b16.design, b16.state, b16.f_tma, b16.g_fp16) == ("split", "fp32", False, True)
    assert bs.state == "fp16" and _state_for("fp16", bs).state == "fp32" and _state_for("fp16-state", b16) == bs
    assert _g_fp16_fits(bs, 600, 99.0) and not _g_fp16_fits(bs, 600, 101.0)
    assert _g_fp16_fits(_state_for("fp16", b16.__class__(design="split")), 600, 1e4)  # fp32 buffer: no limit
    wd = HeadTTTConfig(lr=0.02, steps=50, k=600, weight_decay=0.1)
    assert _g_fp16_fits(b16, 600, 90.0, wd, 100.0) and not _g_fp16_fits(bs, 600, 90.0, wd, 100.0)
