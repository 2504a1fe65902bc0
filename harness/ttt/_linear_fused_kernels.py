"""Triton kernels of the fused linear-head TTT step (see harness/ttt/linear_fused.py for the maths).

Imported lazily by linear_fused.py (this module imports triton at the top). Each kernel is built twice:
compiled (`triton.jit`, GPU) and interpreted (`InterpretedFunction`, CPU under numpy, for tests).
"""

from __future__ import annotations

import triton
import triton.language as tl


def _fwd(
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
    b = tl.program_id(0).to(tl.int64)
    pm = tl.program_id(1)
    pn = tl.program_id(2)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mask_m = rm < k
    mask_n = rn < C
    xp = X + b * sxb + rm[:, None] * sxk + rk[None, :] * sxd  # (BM, BK)
    wp = W + b * swb + rn[None, :] * swc + rk[:, None] * swd  # (BK, BN) = Wᵀ tile
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
    bias = tl.load(CB + b * scb + rn * scc, mask=mask_n, other=0.0)
    zs = (acc + bias[None, :]).to(Z.dtype.element_ty)
    tl.store(Z + b * szb + rm[:, None] * szk + rn[None, :] * szc, zs, mask=mask_m[:, None] & mask_n[None, :])
    z = tl.where(mask_n[None, :], zs.to(tl.float32), float("-inf"))  # stats of the values stored
    mx = tl.max(z, axis=1)
    s = tl.sum(tl.exp(z - mx[:, None]), axis=1)
    tl.store(PMAX + b * spb + rm * spk + pn, mx, mask=mask_m)
    tl.store(PSUM + b * spb + rm * spk + pn, s, mask=mask_m)


def _grad_adam(
    X, Z, PMAX, PSUM, Y,
    WIN, WOUT, M, V, CIN, COUT, MC, VC,
    k, C, d, NT,
    sxb, sxk, sxd,
    szb, szk, szc,
    spb, spk,
    syb, syk,
    swib, swic, swid,
    swb, swc, swd,
    scib, scic,
    scb, scc,
    inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BC: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, NTP: tl.constexpr,
    PREC: tl.constexpr, BF16: tl.constexpr, EMU_BF16: tl.constexpr,
    FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """∇W tile = Σ_i D[b,i,cols]ᵀ X[b,i,dcols] with D = (softmax(Z) - onehot(y)) / k built on the fly,
    then one Adam step of that tile of W, m, v (and of c, m_c, v_c on the dcol-tile-0 programs)."""
    b = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    pd = tl.program_id(2)
    rc = pc * BC + tl.arange(0, BC)
    rd = pd * BD + tl.arange(0, BD)
    ri = tl.arange(0, BK)
    rt = tl.arange(0, NTP)
    mask_c = rc < C
    mask_d = rd < d
    mask_t = rt < NT
    acc = tl.zeros((BC, BD), dtype=tl.float32)
    gc = tl.zeros((BC,), dtype=tl.float32)
    for i0 in range(0, k, BK):
        rows = i0 + ri
        mrow = rows < k
        # log-sum-exp of each row from the per-tile partial (max, Σexp) of the forward kernel
        pmask = mrow[:, None] & mask_t[None, :]
        pmx = tl.load(PMAX + b * spb + rows[:, None] * spk + rt[None, :], mask=pmask, other=float("-inf"))
        psm = tl.load(PSUM + b * spb + rows[:, None] * spk + rt[None, :], mask=pmask, other=0.0)
        pmx = tl.where(mrow[:, None], pmx, 0.0)
        mrow_max = tl.max(pmx, axis=1)
        lse = mrow_max + tl.log(tl.sum(psm * tl.exp(pmx - mrow_max[:, None]), axis=1))
        lse = tl.where(mrow, lse, 0.0)
        zmask = mrow[:, None] & mask_c[None, :]
        z = tl.load(Z + b * szb + rows[:, None] * szk + rc[None, :] * szc, mask=zmask, other=0.0).to(tl.float32)
        y = tl.load(Y + b * syb + rows * syk, mask=mrow, other=-1)
        p = tl.exp(z - lse[:, None])
        dz = (p - tl.where(y[:, None] == rc[None, :], 1.0, 0.0)) * inv_k
        dz = tl.where(zmask, dz, 0.0)  # (BK, BC)
        x = tl.load(X + b * sxb + rows[:, None] * sxk + rd[None, :] * sxd,
                    mask=mrow[:, None] & mask_d[None, :], other=0.0)  # (BK, BD)
        if BF16:
            if EMU_BF16:
                acc += tl.dot(tl.trans(dz.to(tl.bfloat16).to(tl.float32)), x.to(tl.bfloat16).to(tl.float32),
                              input_precision="ieee")
            else:
                acc += tl.dot(tl.trans(dz.to(tl.bfloat16)), x.to(tl.bfloat16))
        else:
            acc += tl.dot(tl.trans(dz), x, input_precision=PREC)
        gc += tl.sum(dz, axis=0)

    # Adam (torch.optim.Adam's formulas, step size and bias corrections precomputed on the host):
    #   (omb1 = 1-β1, omb2 = 1-β2 rounded from double as torch does)
    #   m = m + (1-β1)(g - m);  v = β2 v + (1-β2) g²;  w = w - step (m / (sqrt(v)/sqrt(1-β2^t) + eps))
    wmask = mask_c[:, None] & mask_d[None, :]
    w = tl.load(WIN + b * swib + rc[:, None] * swic + rd[None, :] * swid, mask=wmask, other=0.0)
    g = acc
    if HAS_WD:
        g = g + wd * w
    offs = b * swb + rc[:, None] * swc + rd[None, :] * swd
    if FIRST:
        m = omb1 * g
        v = omb2 * g * g
    else:
        m = tl.load(M + offs, mask=wmask, other=0.0)
        v = tl.load(V + offs, mask=wmask, other=0.0)
        m = m + omb1 * (g - m)
        v = v * beta2 + omb2 * g * g
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    w = w + neg_step * tl.div_rn(m, denom)
    tl.store(WOUT + offs, w, mask=wmask)
    tl.store(M + offs, m, mask=wmask)
    tl.store(V + offs, v, mask=wmask)

    if pd == 0:
        cw = tl.load(CIN + b * scib + rc * scic, mask=mask_c, other=0.0)
        g1 = gc
        if HAS_WD:
            g1 = g1 + wd * cw
        coffs = b * scb + rc * scc
        if FIRST:
            mc = omb1 * g1
            vc = omb2 * g1 * g1
        else:
            mc = tl.load(MC + coffs, mask=mask_c, other=0.0)
            vc = tl.load(VC + coffs, mask=mask_c, other=0.0)
            mc = mc + omb1 * (g1 - mc)
            vc = vc * beta2 + omb2 * g1 * g1
        cden = tl.div_rn(tl.sqrt_rn(vc), bc2_sqrt) + eps
        cw = cw + neg_step * tl.div_rn(mc, cden)
        tl.store(COUT + coffs, cw, mask=mask_c)
        tl.store(MC + coffs, mc, mask=mask_c)
        tl.store(VC + coffs, vc, mask=mask_c)


fwd_kernel = triton.jit(_fwd)
grad_adam_kernel = triton.jit(_grad_adam)

_interpreted: dict[str, object] = {}


def interpreted(name: str):
    """The numpy-interpreted version of kernel `name` ("fwd" or "grad_adam"), for CPU tests."""
    if name not in _interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted[name] = InterpretedFunction({"fwd": _fwd, "grad_adam": _grad_adam}[name])
    return _interpreted[name]
