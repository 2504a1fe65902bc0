"""Triton kernels of the three-kernel design (harness/ttt/fused/three_kernel.py has the maths): `forward_kernel`
(Z = X Wᵀ + c and per-tile softmax partials), `dgrad_kernel` (Dᵀ and ∇c), `gemm_adam_kernel` (∇W = Dᵀ X with
torch.optim.Adam's update of W, m, v in the epilogue). Imported lazily (this module imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl

from harness.ttt.fused.common_kernels import adam_step


@triton.jit
def forward_kernel(
    X, W, CB, Z, PMAX, PSUM,
    k, C, d,
    sxb, sxk, sxd,
    swb, swc, swd,
    scb, scc,
    szb, szk, szc,
    spb, spk,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr, BF16: tl.constexpr, EMU_BF16: tl.constexpr,
):
    """Z[b, rows, cols] = X[b, rows] W[b, cols]ᵀ + c[b, cols]; per-row max and Σexp over this column tile."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # the point varies slowest: its tiles run together and share L2
    X += b * sxb
    W += b * swb
    CB += b * scb
    Z += b * szb
    PMAX += b * spb
    PSUM += b * spb
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mask_m = rm < k
    mask_n = rn < C
    xp = X + rm[:, None] * sxk + rk[None, :] * sxd  # (BM, BK)
    wp = W + rn[None, :] * swc + rk[:, None] * swd  # (BK, BN) = Wᵀ tile
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, d, BK):
        kmask = (k0 + rk) < d
        x = tl.load(xp, mask=mask_m[:, None] & kmask[None, :], other=0.0)
        w = tl.load(wp, mask=kmask[:, None] & mask_n[None, :], other=0.0)
        if BF16:
            if EMU_BF16:  # interpreter: bf16 rounding of the operands, fp32 products (exact) and sums
                acc += tl.dot(x.to(tl.bfloat16).to(tl.float32), w.to(tl.bfloat16).to(tl.float32),
                              input_precision="ieee")
            else:
                acc += tl.dot(x.to(tl.bfloat16), w.to(tl.bfloat16))
        else:
            acc += tl.dot(x, w, input_precision=PREC)
        xp += BK * sxd
        wp += BK * swd
    bias = tl.load(CB + rn * scc, mask=mask_n, other=0.0)
    zs = (acc + bias[None, :]).to(Z.dtype.element_ty)
    tl.store(Z + rm[:, None] * szk + rn[None, :] * szc, zs, mask=mask_m[:, None] & mask_n[None, :])
    z = tl.where(mask_n[None, :], zs.to(tl.float32), float("-inf"))  # stats of the values stored
    mx = tl.max(z, axis=1)
    s = tl.sum(tl.exp(z - mx[:, None]), axis=1)
    tl.store(PMAX + rm * spk + pn, mx, mask=mask_m)
    tl.store(PSUM + rm * spk + pn, s, mask=mask_m)


@triton.jit
def dgrad_kernel(
    Z, PMAX, PSUM, Y, DT, GC,
    k, C, NT,
    szb, szk, szc,
    spb, spk,
    syb, syk,
    sdb, sdc, sdk,
    sgb,
    inv_k,
    BC: tl.constexpr, BK: tl.constexpr, NTP: tl.constexpr,
):
    """Dᵀ[b, cols, :] = ((softmax(Z) - onehot(y)) / k)ᵀ for one column tile over all k rows; ∇c = Σ_i D."""
    pc = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    Z += b * szb
    PMAX += b * spb
    PSUM += b * spb
    Y += b * syb
    DT += b * sdb
    GC += b * sgb
    rc = pc * BC + tl.arange(0, BC)
    ri = tl.arange(0, BK)
    rt = tl.arange(0, NTP)
    mask_c = rc < C
    mask_t = rt < NT
    gc = tl.zeros((BC,), dtype=tl.float32)
    for i0 in range(0, k, BK):
        rows = i0 + ri
        mrow = rows < k
        # log-sum-exp of each row from the forward kernel's per-tile partial (max, Σexp)
        pmask = mrow[:, None] & mask_t[None, :]
        pmx = tl.load(PMAX + rows[:, None] * spk + rt[None, :], mask=pmask, other=float("-inf"))
        psm = tl.load(PSUM + rows[:, None] * spk + rt[None, :], mask=pmask, other=0.0)
        pmx = tl.where(mrow[:, None], pmx, 0.0)
        mrow_max = tl.max(pmx, axis=1)
        lse = mrow_max + tl.log(tl.sum(psm * tl.exp(pmx - mrow_max[:, None]), axis=1))
        lse = tl.where(mrow, lse, 0.0)
        zmask = mrow[:, None] & mask_c[None, :]
        z = tl.load(Z + rows[:, None] * szk + rc[None, :] * szc, mask=zmask, other=0.0).to(tl.float32)
        y = tl.load(Y + rows * syk, mask=mrow, other=-1)
        dz = (tl.exp(z - lse[:, None]) - tl.where(y[:, None] == rc[None, :], 1.0, 0.0)) * inv_k
        dz = tl.where(zmask, dz, 0.0)  # (BK, BC)
        gc += tl.sum(dz, axis=0)
        tl.store(DT + rc[None, :] * sdc + rows[:, None] * sdk, dz.to(DT.dtype.element_ty), mask=zmask)
    tl.store(GC + rc, gc, mask=mask_c)


@triton.jit
def gemm_adam_kernel(
    X, DT, GC,
    WIN, WOUT, M, V, CIN, COUT, MC, VC,
    k, C, d,
    sxb, sxk, sxd,
    sdb, sdc, sdk,
    sgb,
    swib, swic, swid,
    swb, swc, swd,
    scib, scic,
    scb, scc,
    neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BC: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr, BF16: tl.constexpr, EMU_BF16: tl.constexpr,
    FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """∇W tile = Σ_i Dᵀ[b, cols, i] X[b, i, dcols] (a plain pipelined GEMM loop), then one Adam step of that
    tile of W, m, v (and of c, m_c, v_c with ∇c from the D kernel, on the dcol-tile-0 programs)."""
    pc = tl.program_id(0)
    pd = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    X += b * sxb
    DT += b * sdb
    GC += b * sgb
    WIN += b * swib
    WOUT += b * swb
    M += b * swb
    V += b * swb
    CIN += b * scib
    COUT += b * scb
    MC += b * scb
    VC += b * scb
    rc = pc * BC + tl.arange(0, BC)
    rd = pd * BD + tl.arange(0, BD)
    ri = tl.arange(0, BK)
    mask_c = rc < C
    mask_d = rd < d
    acc = tl.zeros((BC, BD), dtype=tl.float32)
    ap = DT + rc[:, None] * sdc + ri[None, :] * sdk  # (BC, BK)
    xp = X + ri[:, None] * sxk + rd[None, :] * sxd  # (BK, BD)
    for i0 in range(0, k, BK):
        kmask = (i0 + ri) < k
        a = tl.load(ap, mask=mask_c[:, None] & kmask[None, :], other=0.0)
        x = tl.load(xp, mask=kmask[:, None] & mask_d[None, :], other=0.0)
        if BF16:
            if EMU_BF16:  # interpreter: bf16 operands, fp32 products (exact) and sums
                acc += tl.dot(a.to(tl.bfloat16).to(tl.float32), x.to(tl.bfloat16).to(tl.float32),
                              input_precision="ieee")
            else:
                acc += tl.dot(a.to(tl.bfloat16), x.to(tl.bfloat16))
        else:
            acc += tl.dot(a, x, input_precision=PREC)
        ap += BK * sdk
        xp += BK * sxk

    wmask = mask_c[:, None] & mask_d[None, :]
    adam_step(acc, WIN + rc[:, None] * swic + rd[None, :] * swid, M + rc[:, None] * swc + rd[None, :] * swd,
              V + rc[:, None] * swc + rd[None, :] * swd, WOUT + rc[:, None] * swc + rd[None, :] * swd, wmask,
              neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
    if pd == 0:
        adam_step(tl.load(GC + rc, mask=mask_c, other=0.0), CIN + rc * scic, MC + rc * scc, VC + rc * scc,
                  COUT + rc * scc, mask_c, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
