"""Triton kernels of the split design (harness/ttt/fused/split.py has the maths): `split_forward_kernel`
(E = exp(S - r), XB, this step's lse), `split_label_kernel` (the one-hot term into E), `split_grad_kernel`
(Eᵀ XB: k·∇W and k·∇c, c's Adam step), `adam_half_kernel` (Adam with fp16 state). The fp32-state Adam step
is common_kernels' `adam_elem_kernel`. Imported lazily (this module imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl

from harness.ttt.fused.common_kernels import adam_math, adam_step, xw_tile


@triton.jit
def split_forward_kernel(
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
    EMU: tl.constexpr, TMA: tl.constexpr = False,
):
    """For BM neighbour rows of one point, with the reference r_i = R[i] (the previous step's log-sum-exp):

        E[i, c] = exp(S[i, c] - r_i),  S = X WHᵀ + c          (fp16, row-major, every column tile)
        L_i = Σ_c E[i, c];  R[i] ← r_i + log L_i                (this step's lse: the next step's reference)
        XB[i, :d] = X[i] / L_i;  XB[i, d] = 1 / L_i;  XB[i, d+1:DX] = 0
        EY[i] = E[i, y_i] - L_i                                  (`split_label_kernel` writes it into E[i, y_i])
    (XMAX[i] = max_j |X[i, j]|, for the range check of XB.)

    E is clamped at exp(11) (fp16's range); OVF[b] is raised when |lse - r| > 11 (10.9 upwards), i.e. when the
    reference was too far off, when X / L would leave fp16's range, or on NaN (the caller recomputes that point).
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
        acc = xw_tile(X, WH, rm, rn, mask_m, mask_n, d, sxk, sxd, shc, shd, BM, BN, BK, "tf32", EMU)
        bias = tl.load(CB + rn * scc, mask=mask_n, other=0.0)
        z = acc + bias[None, :] - r[:, None]
        e = tl.where(mask_n[None, :], tl.exp(tl.minimum(z, 11.0)), 0.0)
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
    for j0 in tl.range(0, DX, BX, num_stages=3):
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


@triton.jit
def split_label_kernel(
    E, EY, Y, n, k, C,
    seb, sek, srb, syb,
    BLOCK: tl.constexpr,
):
    """E[b, i, y_i] = EY[b, i] (the one-hot term of `split_forward_kernel`, after its tiles are stored); n = B·k
    rows. Labels outside [0, C) are skipped (the callers refuse them; this keeps the store in bounds regardless)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b = (offs // k).to(tl.int64)
    i = offs - b * k
    y = tl.load(Y + b * syb + i, mask=mask, other=0)
    mask = mask & (y >= 0) & (y < C)
    ey = tl.load(EY + b * srb + i, mask=mask, other=0.0)
    tl.store(E + b * seb + i * sek + y, ey.to(E.dtype.element_ty), mask=mask)


@triton.jit
def split_grad_kernel(
    E, XB,
    CIN, COUT, MC, VC, G,
    k, C, d,
    seb, sek, sec,
    sqb, sqk,
    scib, scic,
    scb, scc,
    sgb, sgc,
    inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BC: tl.constexpr, BD: tl.constexpr, BKK: tl.constexpr,
    EMU: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """One (BC × BD) tile of Eᵀ XB (a plain pipelined GEMM over the k neighbours, both operands fp16 from
    memory): columns < d are k·∇W, stored to G (rows of d at stride sgc; fp16 G keeps the unscaled sums, so
    small entries stay out of fp16's subnormals); column d is k·∇c, whose program takes c's Adam step."""
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
    if pd * BD < d:
        tl.store(G + b * sgb + rc[:, None] * sgc + rd[None, :], acc.to(G.dtype.element_ty),
                 mask=mask_c[:, None] & (rd < d)[None, :])
    if (pd * BD <= d) & (d < pd * BD + BD):
        gc = tl.sum(tl.where((rd == d)[None, :], acc, 0.0), axis=1)
        adam_step(gc * inv_k, CIN + b * scib + rc * scic, MC + b * scb + rc * scc, VC + b * scb + rc * scc,
                  COUT + b * scb + rc * scc, mask_c, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST,
                  HAS_WD)


@triton.jit
def adam_half_kernel(
    G, WIN, HI, LO, M, S,
    n,
    swib, swic, sb, sgb, sgc,
    k_wd, neg_step, bc2_sqrt, omb1, beta2, omb2, k_eps,
    D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """torch.optim.Adam's step with half-size state (precision "fp16-state"), elementwise over B × C rows of DP
    (d = D used): G = k·∇W (fp16), m and √v kept as k·m and k·√v in fp16 (M, S), W kept as hi + lo, two fp16
    numbers (hi is also the next step's dot operand). In units of k the update is the same:
    m/(√v/√(1-β2^t) + eps) = k·m / (k·√v/... + k·eps). Step 1 reads W from WIN (fp32, the global head).
    n = C·DP; all fp16 buffers share the layout (B, C, DP)."""
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
    m, v, upd = adam_math(g, m, sv * sv, bc2_sqrt, omb1, beta2, omb2, k_eps, FIRST)
    tl.store(M + p, m.to(tl.float16), mask=mask)
    tl.store(S + p, tl.sqrt_rn(v).to(tl.float16), mask=mask)
    w = w + neg_step * upd
    hi = w.to(tl.float16)
    tl.store(HI + p, hi, mask=mask)
    tl.store(LO + p, (w - hi.to(tl.float32)).to(tl.float16), mask=mask)
