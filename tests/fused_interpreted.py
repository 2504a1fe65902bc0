"""The fused kernels under Triton's numpy interpreter, against float64 references of their own roundings.

Run by tests/test_linear_fused.py in a subprocess (TRITON_INTERPRET=1 must be set before triton is imported):

    TRITON_INTERPRET=1 python tests/fused_interpreted.py three_kernel|flash|split

Each case raises AssertionError on a mismatch and prints OK at the end.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.ttt.fused import FlashBlocks, FusedBlocks, fused_head_ttt  # noqa: E402
from harness.ttt.fused import split as split_design  # noqa: E402
from harness.ttt.fused.dispatch import fp16_buffers  # noqa: E402
from harness.ttt.fused.fp16_common import Fp16Run  # noqa: E402
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Problem:
    """B test points with k neighbours each, a head of C classes on d features: several tiles of every kernel,
    masked edges, weight decay."""

    W: torch.Tensor  # (C, d)
    c: torch.Tensor  # (C,)
    X: torch.Tensor  # (B, k, d), unit rows
    y: torch.Tensor  # (B, k)
    q: torch.Tensor  # (B, d)
    cfg: HeadTTTConfig
    g: torch.Generator


def problem() -> Problem:
    g = torch.Generator().manual_seed(0)
    B, k, C, d = 2, 70, 150, 140
    W, c = torch.randn(C, d, generator=g) * 0.1, torch.randn(C, generator=g) * 0.1
    X = torch.nn.functional.normalize(torch.randn(B, k, d, generator=g), dim=-1)
    y, q = torch.randint(0, C, (B, k), generator=g), torch.randn(B, d, generator=g)
    return Problem(W, c, X, y, q, HeadTTTConfig(lr=0.02, steps=4, k=k, weight_decay=0.01), g)


def emulate(W, c, X, y, cfg, dt, design="flash", g16=False, state16=False):
    """The fp16 engines' arithmetic in torch (dt: float64 or float32), rounding where the kernels round.

    flash: W, X rounded to fp16 as dot operands, P = softmax - onehot rounded to fp16 before the ∇W dot.
    split: E = exp(S - r) with r the previous step's lse (step 1: this step's), rounded to fp16 with the
    label entry E - L; XB = X / L rounded to fp16; ∇W = Eᵀ XB / k (g16: Eᵀ XB rounded to fp16 first);
    state16: k·m and k·sqrt(v) rounded to fp16, W kept as hi + lo (fp16 + fp16)."""
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


def _emulation_reference(p: Problem, *args) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(W, c) of the float64 emulation, and the tolerance: 4 × its distance from the float32 emulation."""
    W64, c64 = emulate(p.W, p.c, p.X, p.y, p.cfg, torch.float64, *args)
    W32, _ = emulate(p.W, p.c, p.X, p.y, p.cfg, torch.float32, *args)
    return W64, c64, 4 * float((W32.double() - W64).abs().max()) + 1e-6


def _exact64(p: Problem):
    return batched_head_ttt(p.W.double(), p.c.double(), p.X.double(), p.y, p.q.double(), p.cfg, return_heads=True)


def _refused(fn, *words: str) -> None:
    try:
        fn()
    except ValueError as e:
        assert all(w in str(e) for w in words), e
    else:
        raise AssertionError(f"accepted; expected a ValueError naming {words}")


def three_kernel() -> None:
    """The fp32 ("ieee") kernels land as close to float64 batched_head_ttt as the fp32 torch engine does; bf16
    stays finite and close; default tiles and small odd ones (several tiles, masked edges, no X copy)."""
    p = problem()
    r64, W64, c64 = _exact64(p)
    _, W32, _ = batched_head_ttt(p.W, p.c, p.X, p.y, p.q, p.cfg, return_heads=True)
    tol = 4 * float((W32.double() - W64).abs().max()) + 1e-6
    for blocks in (FusedBlocks(), FusedBlocks(x_t=False, grad_bc=64, fwd_bn=64, d_bc=32, d_bk=16)):
        out, FW, Fc = fused_head_ttt(p.W, p.c, p.X, p.y, p.q, p.cfg, True, precision="ieee", interpret=True,
                                     blocks=blocks)
        assert float((FW.double() - W64).abs().max()) <= tol, (float((FW.double() - W64).abs().max()), tol)
        assert float((Fc.double() - c64).abs().max()) <= 1e-5
        assert torch.equal(out.argmax(1), r64.argmax(1))
        out, FW, _ = fused_head_ttt(p.W, p.c, p.X, p.y, p.q, p.cfg, True, precision="bf16", interpret=True,
                                    blocks=blocks)
        assert torch.isfinite(FW).all() and float((out.double() - r64).abs().max()) < 0.5


def flash() -> None:
    """The flash design (lse kernel, gradient kernel, streaming Adam) equals the float64 emulation of its roundings
    as closely as that emulation run in float32 does; out-of-range fp16 input is refused."""
    p = problem()
    W64, c64, tol = _emulation_reference(p)
    _, Wx, _ = _exact64(p)
    assert float((Wx - W64).abs().max()) > 10 * tol  # the check below can tell fp16 from exact arithmetic
    blocks = FlashBlocks(lse_bm=32, lse_bn=64, lse_bk=32, bc=64, bkk=32, adam_block=256)
    out, FW, Fc = fused_head_ttt(p.W, p.c, p.X, p.y, p.q, p.cfg, True, precision="fp16", interpret=True,
                                 blocks=blocks)
    err = float((FW.double() - W64).abs().max())
    assert err <= tol, (blocks, err, tol)
    assert float((Fc.double() - c64).abs().max()) <= 1e-5
    ref = torch.einsum("bd,bcd->bc", p.q.double(), W64) + c64
    assert torch.equal(out.argmax(1), ref.argmax(1))
    _refused(lambda: fused_head_ttt(p.W, p.c, p.X * 1e6, p.y, p.q, p.cfg, precision="fp16", interpret=True),
             "feats", "fp16")


def split() -> None:
    """The split design (softmax rows against the previous step's lse, one GEMM Eᵀ XB, streaming Adam; TMA stores;
    fp16 gradient buffer; fp16 optimiser state = precision "fp16-state") equals the float64 emulation of its own
    roundings within the float32 emulation's distance, while the exact engine and the other roundings are
    measurably farther; a reference that leaves fp16's range is recomputed (flash)."""
    p = problem()
    ref = {key: _emulation_reference(p, "split", *key) for key in ((False, False), (True, False), (True, True))}
    _, Wx, _ = _exact64(p)
    assert float((Wx - ref[(False, False)][0]).abs().max()) > 5 * ref[(False, False)][2]
    assert float((ref[(True, False)][0] - ref[(False, False)][0]).abs().max()) > 2 * ref[(False, False)][2]
    small = FlashBlocks(design="split", lse_bm=32, lse_bn=64, lse_bk=32, f_bm=32, f_bn=64, f_bk=32, bc=32,
                        bd=64, bkk=32, adam_block=256)
    variants = [(small, "fp16"), (dataclasses.replace(small, f_tma=True, g_fp16=True), "fp16"),
                (dataclasses.replace(small, g_fp16=True, state="fp16"), "fp16-state")]
    for blocks, prec in variants:
        W64, c64, tol = ref[(blocks.g_fp16, blocks.state == "fp16")]
        out, FW, Fc = fused_head_ttt(p.W, p.c, p.X, p.y, p.q, p.cfg, True, precision=prec, interpret=True,
                                     blocks=blocks)
        err = float((FW.double() - W64).abs().max())
        assert err <= tol, (blocks, err, tol)
        assert float((Fc.double() - c64).abs().max()) <= 1e-5
        assert torch.equal(out.argmax(1), (torch.einsum("bd,bcd->bc", p.q.double(), W64) + c64).argmax(1))
    # a step large enough to move the log-sum-exp by more than fp16's range: the point is redone by flash
    big = HeadTTTConfig(lr=3.0, steps=3, k=p.cfg.k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, FW, _ = fused_head_ttt(p.W, p.c, p.X * 20, p.y, p.q, big, True, precision="fp16", interpret=True,
                                    blocks=small)
    assert any("recomputed by the flash design" in str(w.message) for w in caught)
    fo, FWf, _ = fused_head_ttt(p.W, p.c, p.X * 20, p.y, p.q, big, True, precision="fp16", interpret=True,
                                blocks=FlashBlocks())
    assert torch.equal(FW, FWf) and torch.equal(out, fo)
    # X / L out of fp16's range while |lse - r| stays small (large features, a falling lse): flagged too
    Wz, cz = torch.zeros(3, 16), torch.tensor([0.0, 20.0, 0.0])
    Xz = 10 + 0.1 * torch.rand(1, 8, 16, generator=p.g)
    yz, qz, z_cfg = torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 16), HeadTTTConfig(lr=10 / 161, steps=2, k=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, FW, _ = fused_head_ttt(Wz, cz, Xz, yz, qz, z_cfg, True, precision="fp16", interpret=True,
                                    blocks=dataclasses.replace(small, g_fp16=True))
    assert any("recomputed by the flash design" in str(w.message) for w in caught)
    assert torch.isfinite(FW).all() and torch.isfinite(out).all()
    _refused(lambda: fused_head_ttt(p.W, p.c, p.X, p.y + p.W.shape[0], p.q, p.cfg, precision="fp16", interpret=True,
                                    blocks=small), "labels")
    _parts_equal_the_whole(p, dataclasses.replace(small, g_fp16=True, state="fp16"))
    _parts_equal_the_whole(p, small)


def _parts_equal_the_whole(p: Problem, blocks: FlashBlocks) -> None:
    """The batch run in parts on views of one set of buffers (as FusedHeadTTT runs it on two streams) gives the
    whole run's heads bit for bit."""
    B, k, d = p.X.shape
    C = p.W.shape[0]

    def fresh() -> Fp16Run:
        x = torch.zeros(B, k, d, dtype=torch.float16)
        x.copy_(p.X)
        return Fp16Run(p.W, p.W.half(), p.c, x, p.y, fp16_buffers(B, k, C, d, blocks, "cpu"), p.cfg, blocks, True)

    whole, parts = fresh(), fresh()
    split_design.run_steps(whole)
    for lo, hi in ((0, 1), (1, 2)):
        split_design.run_steps(parts.part(lo, hi))
    assert torch.equal(whole.ws.W, parts.ws.W) and torch.equal(whole.ws.final_c(p.cfg.steps),
                                                                parts.ws.final_c(p.cfg.steps))
    assert float((whole.ws.W - p.W).abs().max()) > 1e-3  # the heads moved: untouched buffers would not compare


CASES = {"three_kernel": three_kernel, "flash": flash, "split": split}

if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("set TRITON_INTERPRET=1 (before triton is imported)")
    CASES[sys.argv[1]]()
    print("OK")
