"""Triton kernels of the fused linear-head TTT step (see harness/ttt/linear_fused.py for the maths).

Three launches a step: `_fwd` (Z = X Wᵀ + c and per-tile softmax partials), `_dgrad` (Dᵀ and ∇c),
`_gemm_adam` (∇W = Dᵀ X with torch.optim.Adam's update of W, m, v in the epilogue).

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


def _dgrad(
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


def _adam_math_py(g, m, v, bc2_sqrt, omb1, beta2, omb2, eps, FIRST: tl.constexpr):
    """torch.optim.Adam's arithmetic (bias corrections precomputed on the host; omb1 = 1-β1, omb2 = 1-β2
    rounded from double as torch does): the new moments and the update direction
      m = m + (1-β1)(g - m);  v = β2 v + (1-β2) g²;  upd = m / (sqrt(v)/sqrt(1-β2^t) + eps)
    (at step 1, FIRST, the previous m, v are zero and ignored); w moves by -step·upd."""
    if FIRST:
        m = omb1 * g
        v = omb2 * g * g
    else:
        m = m + omb1 * (g - m)
        v = v * beta2 + omb2 * g * g
    return m, v, tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)


_adam_math = triton.jit(_adam_math_py)


def _adam_step_py(
    g, WP, MP, VP, WOUTP, mask,
    neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """torch.optim.Adam's update (`_adam_math`) at pointers of any shape, fp32 state. g is the gradient without
    weight decay; m, v are stored in place; returns the new w (also stored)."""
    if HAS_WD:
        g = g + wd * tl.load(WP, mask=mask, other=0.0)
    m = g if FIRST else tl.load(MP, mask=mask, other=0.0)
    v = g if FIRST else tl.load(VP, mask=mask, other=0.0)
    m, v, upd = _adam_math(g, m, v, bc2_sqrt, omb1, beta2, omb2, eps, FIRST)
    tl.store(MP, m, mask=mask)
    tl.store(VP, v, mask=mask)
    w = tl.load(WP, mask=mask, other=0.0) + neg_step * upd
    tl.store(WOUTP, w, mask=mask)
    return w


_adam_step = triton.jit(_adam_step_py)


def _gemm_adam(
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
    _adam_step(acc, WIN + rc[:, None] * swic + rd[None, :] * swid, M + rc[:, None] * swc + rd[None, :] * swd,
               V + rc[:, None] * swc + rd[None, :] * swd, WOUT + rc[:, None] * swc + rd[None, :] * swd, wmask,
               neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
    if pd == 0:
        _adam_step(tl.load(GC + rc, mask=mask_c, other=0.0), CIN + rc * scic, MC + rc * scc, VC + rc * scc,
                   COUT + rc * scc, mask_c, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)


# ---- the "flash" design: two launches a step (fp16 operands) ---------------------------------------------


def _xw_tile_py(
    X, W, rm, rn, mask_m, mask_n, d,
    sxk, sxd, swc, swd,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, EMU: tl.constexpr,
):
    """The (rows rm × columns rn) tile of X Wᵀ, a pipelined loop over d in chunks of BK (fp32 accumulation; EMU,
    the interpreter, upcasts the operands and dots them in fp32, exact for fp16 values)."""
    rk = tl.arange(0, BK)
    xp = X + rm[:, None] * sxk + rk[None, :] * sxd  # (BM, BK)
    wp = W + rn[None, :] * swc + rk[:, None] * swd  # (BK, BN) = Wᵀ tile
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, d, BK):
        kmask = (k0 + rk) < d
        x = tl.load(xp, mask=mask_m[:, None] & kmask[None, :], other=0.0)
        w = tl.load(wp, mask=kmask[:, None] & mask_n[None, :], other=0.0)
        if EMU:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc, input_precision=PREC)
        xp += BK * sxd
        wp += BK * swd
    return acc


_xw_tile = triton.jit(_xw_tile_py)


def _lse(
    X, W, CB, LSE,
    k, C, d,
    sxb, sxk, sxd,
    swb, swc, swd,
    scb, scc,
    slb,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr, EMU: tl.constexpr,
):
    """lse[b, rows] = log Σ_c exp(X[b, rows] W[b, c]ᵀ + c[b, c]): an online softmax over column tiles.

    Nothing of Z is stored. X and W are fp16 (or fp32 with PREC "tf32"); EMU (interpreter) upcasts the
    operands and dots them in fp32, which is exact for fp16 values (the products fit fp32)."""
    pm = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    X += b * sxb
    W += b * swb
    CB += b * scb
    rm = pm * BM + tl.arange(0, BM)
    mask_m = rm < k
    run_max = tl.full((BM,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BM,), dtype=tl.float32)
    for n0 in range(0, C, BN):
        rn = n0 + tl.arange(0, BN)
        mask_n = rn < C
        acc = _xw_tile(X, W, rm, rn, mask_m, mask_n, d, sxk, sxd, swc, swd, BM, BN, BK, PREC, EMU)
        bias = tl.load(CB + rn * scc, mask=mask_n, other=0.0)
        z = tl.where(mask_n[None, :], acc + bias[None, :], float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(LSE + b * slb + rm, run_max + tl.log(run_sum), mask=mask_m)


def _adam_tile_py(
    acc, rc, rd, mask_c, mask_d,
    WIN, WOUT, WHOUT, M, V,
    swic, swid, swc, swd, shoc, shod,
    inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    FIRST: tl.constexpr, HAS_WD: tl.constexpr, WRITE_WH: tl.constexpr,
):
    """torch.optim.Adam's update of the (rc × rd) tile of W, m, v from the summed gradient `acc` (÷ k here);
    also writes the fp16 operand copy of the new W when WRITE_WH."""
    wmask = mask_c[:, None] & mask_d[None, :]
    offs = rc[:, None] * swc + rd[None, :] * swd
    w = _adam_step(acc * inv_k, WIN + rc[:, None] * swic + rd[None, :] * swid, M + offs, V + offs, WOUT + offs, wmask,
                   neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
    if WRITE_WH:
        tl.store(WHOUT + rc[:, None] * shoc + rd[None, :] * shod, w.to(WHOUT.dtype.element_ty), mask=wmask)


_adam_tile = triton.jit(_adam_tile_py)


def _flash4_adam(
    X, WH, LSE, Y,
    WIN, WOUT, WHOUT, M, V, CIN, COUT, MC, VC, G,
    k, C, d,
    sxb, sxk, sxd,
    shb, shc, shd,
    slb, syb, syk,
    swib, swic, swid,
    swb, swc, swd,
    shob, shoc, shod,
    scib, scic,
    scb, scc,
    inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BC: tl.constexpr, DCH: tl.constexpr, BKK: tl.constexpr,
    EMU: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr, WRITE_WH: tl.constexpr,
    DIAG: tl.constexpr = 0, GRAD_OUT: tl.constexpr = False,
):
    """∇W and ∇c of BC classes (all d) of one point, without Z or D in memory (the flash-attention shape):

        for each chunk of BKK neighbour rows i:
            S  = W[cols] X[i]ᵀ + c[cols]                  (BC × BKK; from the fp16 operand copy WH of W)
            P  = exp(S - lse[i]) - [y_i = col]             (softmax - onehot, transposed; never stored)
            ∇c += Σ_i P;   ∇W[cols] += P X[i]              (fp32 accumulation)

    d is held as four column chunks of DCH (d <= 4·DCH): four accumulators, so the Adam epilogue can run
    chunk by chunk. GRAD_OUT stores ∇W / k to G instead (W's layout) for `_adam_elem`, which is faster:
    with the accumulators live, the in-kernel epilogue's loads serialise (measured 16 µs vs ~5 µs per point
    and step on an H100). ∇c's Adam step always runs here. DIAG (timing only): 1 skips the epilogue,
    2 the S dots, 3 the ∇W dots. WH and c are read from buffers this launch does not write (the caller
    alternates two copies), so no program reads a tile another program is updating."""
    pc = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    X += b * sxb
    WH += b * shb
    LSE += b * slb
    Y += b * syb
    WIN += b * swib
    WOUT += b * swb
    WHOUT += b * shob
    M += b * swb
    V += b * swb
    CIN += b * scib
    COUT += b * scb
    MC += b * scb
    VC += b * scb
    rc = pc * BC + tl.arange(0, BC)
    mask_c = rc < C
    r0 = tl.arange(0, DCH)
    r1 = r0 + DCH
    r2 = r0 + 2 * DCH
    r3 = r0 + 3 * DCH
    m0 = r0 < d
    m1 = r1 < d
    m2 = r2 < d
    m3 = r3 < d
    whp = WH + rc[:, None] * shc
    wh0 = tl.load(whp + r0[None, :] * shd, mask=mask_c[:, None] & m0[None, :], other=0.0)
    wh1 = tl.load(whp + r1[None, :] * shd, mask=mask_c[:, None] & m1[None, :], other=0.0)
    wh2 = tl.load(whp + r2[None, :] * shd, mask=mask_c[:, None] & m2[None, :], other=0.0)
    wh3 = tl.load(whp + r3[None, :] * shd, mask=mask_c[:, None] & m3[None, :], other=0.0)
    bias = tl.load(CIN + rc * scic, mask=mask_c, other=0.0)
    acc0 = tl.zeros((BC, DCH), dtype=tl.float32)
    acc1 = tl.zeros((BC, DCH), dtype=tl.float32)
    acc2 = tl.zeros((BC, DCH), dtype=tl.float32)
    acc3 = tl.zeros((BC, DCH), dtype=tl.float32)
    gc = tl.zeros((BC,), dtype=tl.float32)
    ri = tl.arange(0, BKK)
    for i0 in range(0, k, BKK):
        rows = i0 + ri
        mrow = rows < k
        xp = X + rows[:, None] * sxk
        x0 = tl.load(xp + r0[None, :] * sxd, mask=mrow[:, None] & m0[None, :], other=0.0)
        x1 = tl.load(xp + r1[None, :] * sxd, mask=mrow[:, None] & m1[None, :], other=0.0)
        x2 = tl.load(xp + r2[None, :] * sxd, mask=mrow[:, None] & m2[None, :], other=0.0)
        x3 = tl.load(xp + r3[None, :] * sxd, mask=mrow[:, None] & m3[None, :], other=0.0)
        if EMU:
            s = tl.dot(wh0.to(tl.float32), tl.trans(x0.to(tl.float32)), input_precision="ieee")
            s += tl.dot(wh1.to(tl.float32), tl.trans(x1.to(tl.float32)), input_precision="ieee")
            s += tl.dot(wh2.to(tl.float32), tl.trans(x2.to(tl.float32)), input_precision="ieee")
            s += tl.dot(wh3.to(tl.float32), tl.trans(x3.to(tl.float32)), input_precision="ieee")
        elif DIAG == 2:  # timing diagnostics only: no S dots
            s = tl.zeros((BC, BKK), dtype=tl.float32) + i0
        else:
            s = tl.dot(wh0, tl.trans(x0))
            s = tl.dot(wh1, tl.trans(x1), s)
            s = tl.dot(wh2, tl.trans(x2), s)
            s = tl.dot(wh3, tl.trans(x3), s)
        lse = tl.load(LSE + rows, mask=mrow, other=0.0)
        y = tl.load(Y + rows * syk, mask=mrow, other=-1)
        p = tl.exp(s + bias[:, None] - lse[None, :]) - tl.where(rc[:, None] == y[None, :], 1.0, 0.0)
        p = tl.where(mrow[None, :], p, 0.0)
        gc += tl.sum(p, axis=1)
        ph = p.to(x0.dtype)
        # the same tiles named again for the ∇W dots (Triton merges the loads; one shared-memory copy
        # serves both dots)
        x0 = tl.load(xp + r0[None, :] * sxd, mask=mrow[:, None] & m0[None, :], other=0.0)
        x1 = tl.load(xp + r1[None, :] * sxd, mask=mrow[:, None] & m1[None, :], other=0.0)
        x2 = tl.load(xp + r2[None, :] * sxd, mask=mrow[:, None] & m2[None, :], other=0.0)
        x3 = tl.load(xp + r3[None, :] * sxd, mask=mrow[:, None] & m3[None, :], other=0.0)
        if EMU:
            ph32 = ph.to(tl.float32)
            acc0 += tl.dot(ph32, x0.to(tl.float32), input_precision="ieee")
            acc1 += tl.dot(ph32, x1.to(tl.float32), input_precision="ieee")
            acc2 += tl.dot(ph32, x2.to(tl.float32), input_precision="ieee")
            acc3 += tl.dot(ph32, x3.to(tl.float32), input_precision="ieee")
        elif DIAG == 3:  # timing diagnostics only: no ∇W dots
            acc0 += tl.sum(ph.to(tl.float32), axis=1)[:, None]
        else:
            acc0 = tl.dot(ph, x0, acc0)
            acc1 = tl.dot(ph, x1, acc1)
            acc2 = tl.dot(ph, x2, acc2)
            acc3 = tl.dot(ph, x3, acc3)

    if DIAG == 1:  # timing diagnostics only: no Adam epilogue, one store of the summed accumulators
        tot = acc0 + acc1 + acc2 + acc3
        tl.store(WOUT + rc[:, None] * swc + r0[None, :] * swd, tot, mask=mask_c[:, None] & m0[None, :])
        return

    if GRAD_OUT:  # ∇W (÷ k) to G, in W's layout; the Adam step of W is `_adam_elem`'s (a separate launch)
        gp = G + b * swb + rc[:, None] * swc
        tl.store(gp + r0[None, :] * swd, acc0 * inv_k, mask=mask_c[:, None] & m0[None, :])
        tl.store(gp + r1[None, :] * swd, acc1 * inv_k, mask=mask_c[:, None] & m1[None, :])
        tl.store(gp + r2[None, :] * swd, acc2 * inv_k, mask=mask_c[:, None] & m2[None, :])
        tl.store(gp + r3[None, :] * swd, acc3 * inv_k, mask=mask_c[:, None] & m3[None, :])
    else:
        _adam_tile(acc0, rc, r0, mask_c, m0, WIN, WOUT, WHOUT, M, V, swic, swid, swc, swd, shoc, shod,
                   inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD, WRITE_WH)
        _adam_tile(acc1, rc, r1, mask_c, m1, WIN, WOUT, WHOUT, M, V, swic, swid, swc, swd, shoc, shod,
                   inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD, WRITE_WH)
        _adam_tile(acc2, rc, r2, mask_c, m2, WIN, WOUT, WHOUT, M, V, swic, swid, swc, swd, shoc, shod,
                   inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD, WRITE_WH)
        _adam_tile(acc3, rc, r3, mask_c, m3, WIN, WOUT, WHOUT, M, V, swic, swid, swc, swd, shoc, shod,
                   inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD, WRITE_WH)

    _adam_step(gc * inv_k, CIN + rc * scic, MC + rc * scc, VC + rc * scc, COUT + rc * scc, mask_c,
               neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)



def _adam_elem(
    G, WIN, WOUT, WHOUT, M, V,
    n, d,
    swib, swb, shob, shoc, sgb, sgr, g_mul,
    neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BLOCK: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr, WRITE_WH: tl.constexpr,
):
    """torch.optim.Adam's step of W, m, v (B × n elements, rows of d contiguous) from the gradient G (rows of
    d at row stride sgr); streams at copy bandwidth, and writes the fp16 operand copy of the new W."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row = offs // d
    col = offs - row * d
    w = _adam_step(tl.load(G + b * sgb + row * sgr + col, mask=mask, other=0.0).to(tl.float32) * g_mul,
                   WIN + b * swib + offs,
                   M + b * swb + offs, V + b * swb + offs, WOUT + b * swb + offs, mask,
                   neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
    if WRITE_WH:
        tl.store(WHOUT + b * shob + row * shoc + col, w.to(WHOUT.dtype.element_ty), mask=mask)



# ---- the "split" design: softmax rows with a fixed reference, then a plain GEMM with Adam in its epilogue ---


def _split_fwd(
    X, WH, CB, Y, R, E, XB, OVF, EY, XMAX,
    k, C, d,
    sxb, sxk, sxd,
    shb, shc, shd,
    scb, scc,
    syb, syk,
    srb,
    seb, sek, sec,
    sqb, sqk,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BX: tl.constexpr, DX: tl.constexpr,
    EMU: tl.constexpr, TMA: tl.constexpr = False, DIAG: tl.constexpr = 0,
):
    """For BM neighbour rows of one point, with the reference r_i = R[i] (the previous step's log-sum-exp):

        E[i, c] = exp(S[i, c] - r_i),  S = X WHᵀ + c          (fp16, row-major, every column tile)
        L_i = Σ_c E[i, c];  R[i] ← r_i + log L_i                (this step's lse: the next step's reference)
        XB[i, :d] = X[i] / L_i;  XB[i, d] = 1 / L_i;  XB[i, d+1:DX] = 0
        EY[i] = E[i, y_i] - L_i                                  (`_split_label` writes it into E[i, y_i])
    (XMAX[i] = max_j |X[i, j]|, for the range check of XB.)

    so that (softmax - onehot)[i, c] = E[i, c] / L_i and ∇W·k, ∇c·k are the columns of Eᵀ XB, one plain
    GEMM with both operands in memory. E is clamped at exp(11) (fp16's range); OVF[b] is raised when
    |lse - r| > 11 (10.9 upwards), i.e. when the reference was too far off, when X / L would leave fp16's range,
    or on NaN (the caller recomputes that point).
    TMA: E and XB are (B, k, ·) tensor descriptors with blocks (1, BM, BN) and (1, BM, BX), and their tiles
    are stored by the copy engine (asynchronous); otherwise they are pointers (strides seb, sek, sec; sqb, sqk)."""
    pm = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    X += b * sxb
    WH += b * shb
    CB += b * scb
    Y += b * syb
    R += b * srb
    EY += b * srb
    XMAX += b * srb
    rm = pm * BM + tl.arange(0, BM)
    mask_m = rm < k
    r = tl.load(R + rm, mask=mask_m, other=0.0)
    y = tl.load(Y + rm * syk, mask=mask_m, other=-1).to(tl.int32)
    tot = tl.zeros((BM,), dtype=tl.float32)
    ey = tl.zeros((BM,), dtype=tl.float32)
    for n0 in range(0, C, BN):
        rn = n0 + tl.arange(0, BN)
        mask_n = rn < C
        acc = _xw_tile(X, WH, rm, rn, mask_m, mask_n, d, sxk, sxd, shc, shd, BM, BN, BK, "tf32", EMU)
        bias = tl.load(CB + rn * scc, mask=mask_n, other=0.0)
        z = acc + bias[None, :] - r[:, None]
        e = tl.where(mask_n[None, :], tl.exp(tl.minimum(z, 11.0)), 0.0)
        if DIAG % 2 == 0:  # DIAG (timing only): 1 skips these stores, 2 the XB tail, 3 both
            if TMA:
                E.store([b.to(tl.int32), pm * BM, n0], e.to(tl.float16)[None, :, :])
            else:
                tl.store(E + b * seb + rm[:, None] * sek + rn[None, :] * sec, e.to(E.dtype.element_ty),
                         mask=mask_m[:, None] & mask_n[None, :])
        tot += tl.sum(e, axis=1)
        ey += tl.sum(tl.where(rn[None, :] == y[:, None], e, 0.0), axis=1)
    lse = r + tl.log(tot)
    tl.store(R + rm, lse, mask=mask_m)
    tl.store(EY + rm, ey - tot, mask=mask_m)
    # every S - r <= log Σ exp(S - r) = lse - r, so lse - r <= 10.9 means no value was clamped; written so that
    # NaN is flagged too
    ok = (lse - r <= 10.9) & (lse - r >= -11.0)
    inv = 1.0 / tot
    ok = ok & (tl.load(XMAX + rm, mask=mask_m, other=0.0) * inv <= 60000.0) & (inv <= 60000.0)  # X / L fits fp16
    rx = tl.arange(0, BX)
    for j0 in tl.range(0, DX if DIAG < 2 else 0, BX, num_stages=3):
        cols = j0 + rx
        xv = tl.load(X + rm[:, None] * sxk + cols[None, :] * sxd, mask=mask_m[:, None] & (cols < d)[None, :],
                     other=0.0).to(tl.float32)
        xv = tl.where((cols == d)[None, :], 1.0, xv) * inv[:, None]
        if TMA:
            XB.store([b.to(tl.int32), pm * BM, j0], xv.to(tl.float16)[None, :, :])
        else:
            tl.store(XB + b * sqb + rm[:, None] * sqk + cols[None, :], xv.to(XB.dtype.element_ty),
                     mask=mask_m[:, None] & (cols < DX)[None, :])
    tl.atomic_max(OVF + b, tl.max(tl.where(mask_m & ~ok, 1, 0), axis=0))


def _split_label(
    E, EY, Y, n, k, C,
    seb, sek, srb, syb,
    BLOCK: tl.constexpr,
):
    """E[b, i, y_i] = EY[b, i] (the one-hot term of `_split_fwd`, after its tiles are stored); n = B·k rows.
    Labels outside [0, C) are skipped (the callers refuse them; this keeps the store in bounds regardless)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b = (offs // k).to(tl.int64)
    i = offs - b * k
    y = tl.load(Y + b * syb + i, mask=mask, other=0)
    mask = mask & (y >= 0) & (y < C)
    ey = tl.load(EY + b * srb + i, mask=mask, other=0.0)
    tl.store(E + b * seb + i * sek + y, ey.to(E.dtype.element_ty), mask=mask)


def _split_grad(
    E, XB,
    WIN, WOUT, WHOUT, M, V, CIN, COUT, MC, VC, G,
    k, C, d,
    seb, sek, sec,
    sqb, sqk,
    swib, swic, swid,
    swb, swc, swd,
    shob, shoc, shod,
    scib, scic,
    scb, scc,
    sgb, sgc,
    inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BC: tl.constexpr, BD: tl.constexpr, BKK: tl.constexpr,
    EMU: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr, WRITE_WH: tl.constexpr,
    GRAD_OUT: tl.constexpr,
):
    """One (BC × BD) tile of Eᵀ XB (a plain pipelined GEMM over the k neighbours, both operands fp16 from
    memory): columns < d are ∇W·k, column d is ∇c·k (`_split_fwd`). Then torch.optim.Adam's step of that
    tile of W, m, v plus the fp16 copy of the new W; with GRAD_OUT the tile goes to G (W's layout) for
    `_adam_elem` / `_adam_half` instead. The program holding column d steps c, m_c, v_c either way."""
    pc = tl.program_id(0)
    pd = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    E += b * seb
    XB += b * sqb
    rc = pc * BC + tl.arange(0, BC)
    rd = pd * BD + tl.arange(0, BD)
    ri = tl.arange(0, BKK)
    mask_c = rc < C
    acc = tl.zeros((BC, BD), dtype=tl.float32)
    # E and XB rows are zero-padded to whole tiles (the caller's buffers), so only rows are masked: a mask
    # along the contiguous axis would stop Triton from pipelining these loads (cp.async needs whole vectors)
    for i0 in range(0, k, BKK):
        rows = i0 + ri
        mrow = rows < k
        et = tl.load(E + rc[:, None] * sec + rows[None, :] * sek, mask=mrow[None, :], other=0.0)
        q = tl.load(XB + rows[:, None] * sqk + rd[None, :], mask=mrow[:, None], other=0.0)
        if EMU:
            acc += tl.dot(et.to(tl.float32), q.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(et, q, acc)
    if GRAD_OUT:  # G = ∇W·k (fp16 G: the unscaled sums keep small entries out of fp16's subnormals)
        if pd * BD < d:
            tl.store(G + b * sgb + rc[:, None] * sgc + rd[None, :], acc.to(G.dtype.element_ty),
                     mask=mask_c[:, None] & (rd < d)[None, :])
    else:
        if pd * BD < d:
            _adam_tile(acc, rc, rd, mask_c, rd < d, WIN + b * swib, WOUT + b * swb, WHOUT + b * shob, M + b * swb,
                       V + b * swb, swic, swid, swc, swd, shoc, shod,
                       inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD, WRITE_WH)
    if (pd * BD <= d) & (d < pd * BD + BD):
        gc = tl.sum(tl.where((rd == d)[None, :], acc, 0.0), axis=1)
        _adam_step(gc * inv_k, CIN + b * scib + rc * scic, MC + b * scb + rc * scc, VC + b * scb + rc * scc,
                   COUT + b * scb + rc * scc, mask_c, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST,
                   HAS_WD)


def _adam_half(
    G, WIN, HI, LO, M, S,
    n,
    swib, swic, sb, sgb, sgc,
    k_wd, neg_step, bc2_sqrt, omb1, beta2, omb2, k_eps,
    D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """torch.optim.Adam's step with half-size state (the "fp16 state" of the split design), elementwise over
    B × C rows of DP (d = D used): G = k·∇W (fp16), m and √v kept as k·m and k·√v in fp16 (M, S), W kept as
    hi + lo, two fp16 numbers (hi is also the next step's dot operand; hi + lo holds W to ~2^-22 relative or
    6e-8 absolute). In units of k the update is the same: m/(√v/√(1-β2^t) + eps) = k·m / (k·√v/... + k·eps).
    Step 1 reads W from WIN (fp32, the global head). n = C·DP; all fp16 buffers share the layout (B, C, DP)."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = offs // DP
    col = offs - row * DP
    mask = (offs < n) & (col < D)
    g = tl.load(G + b * sgb + row * sgc + col, mask=mask, other=0.0).to(tl.float32)
    p = b * sb + offs
    if FIRST:
        w = tl.load(WIN + b * swib + row * swic + col, mask=mask, other=0.0)
    else:
        w = tl.load(HI + p, mask=mask, other=0.0).to(tl.float32) + tl.load(LO + p, mask=mask, other=0.0).to(tl.float32)
    if HAS_WD:
        g = g + k_wd * w
    m = g if FIRST else tl.load(M + p, mask=mask, other=0.0).to(tl.float32)
    sv = g if FIRST else tl.load(S + p, mask=mask, other=0.0).to(tl.float32)
    m, v, upd = _adam_math(g, m, sv * sv, bc2_sqrt, omb1, beta2, omb2, k_eps, FIRST)
    tl.store(M + p, m.to(tl.float16), mask=mask)
    tl.store(S + p, tl.sqrt_rn(v).to(tl.float16), mask=mask)
    w = w + neg_step * upd
    hi = w.to(tl.float16)
    tl.store(HI + p, hi, mask=mask)
    tl.store(LO + p, (w - hi.to(tl.float32)).to(tl.float16), mask=mask)


fwd_kernel = triton.jit(_fwd)
dgrad_kernel = triton.jit(_dgrad)
gemm_adam_kernel = triton.jit(_gemm_adam)
lse_kernel = triton.jit(_lse)
flash4_adam_kernel = triton.jit(_flash4_adam)
adam_elem_kernel = triton.jit(_adam_elem)
split_fwd_kernel = triton.jit(_split_fwd)
split_grad_kernel = triton.jit(_split_grad)
split_label_kernel = triton.jit(_split_label)
adam_half_kernel = triton.jit(_adam_half)

_interpreted: dict[str, object] = {}


def interpreted(name: str):
    """The numpy-interpreted version of kernel `name` ("fwd", "dgrad", "gemm_adam", "lse", "flash4_adam",
    "adam_elem", "split_fwd", "split_label", "split_grad", "adam_half"), for CPU tests."""
    if name not in _interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted[name] = InterpretedFunction({"fwd": _fwd, "dgrad": _dgrad, "gemm_adam": _gemm_adam, "lse": _lse,
                                                 "flash4_adam": _flash4_adam, "adam_elem": _adam_elem,
                                                 "split_fwd": _split_fwd, "split_grad": _split_grad,
                                                 "split_label": _split_label, "adam_half": _adam_half}[name])
    return _interpreted[name]
