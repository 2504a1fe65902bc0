"""Triton pieces shared by the fused designs: torch.optim.Adam's arithmetic, an X Wᵀ tile, the log-sum-exp
kernel (the flash design's first launch, the split design's first reference) and the streaming Adam kernel.

Imported lazily (this module imports triton). Under TRITON_INTERPRET=1 (set before triton is imported)
every `triton.jit` below is Triton's numpy interpreter instead: the CPU tests run these same functions.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def adam_math(g, m, v, bc2_sqrt, omb1, beta2, omb2, eps, FIRST: tl.constexpr):
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


@triton.jit
def adam_step(
    g, WP, MP, VP, WOUTP, mask,
    neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """torch.optim.Adam's update (`adam_math`) at pointers of any shape, fp32 state. g is the gradient without
    weight decay; m, v are stored in place; returns the new w (also stored at WOUTP)."""
    if HAS_WD:
        g = g + wd * tl.load(WP, mask=mask, other=0.0)
    m = g if FIRST else tl.load(MP, mask=mask, other=0.0)
    v = g if FIRST else tl.load(VP, mask=mask, other=0.0)
    m, v, upd = adam_math(g, m, v, bc2_sqrt, omb1, beta2, omb2, eps, FIRST)
    tl.store(MP, m, mask=mask)
    tl.store(VP, v, mask=mask)
    w = tl.load(WP, mask=mask, other=0.0) + neg_step * upd
    tl.store(WOUTP, w, mask=mask)
    return w


@triton.jit
def xw_tile(
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


@triton.jit
def lse_kernel(
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
        acc = xw_tile(X, W, rm, rn, mask_m, mask_n, d, sxk, sxd, swc, swd, BM, BN, BK, PREC, EMU)
        bias = tl.load(CB + rn * scc, mask=mask_n, other=0.0)
        z = tl.where(mask_n[None, :], acc + bias[None, :], float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(LSE + b * slb + rm, run_max + tl.log(run_sum), mask=mask_m)


@triton.jit
def adam_elem_kernel(
    G, WIN, WOUT, WHOUT, M, V,
    n, d,
    swib, swb, shob, shoc, sgb, sgr, g_mul,
    neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BLOCK: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr, WRITE_WH: tl.constexpr,
):
    """torch.optim.Adam's step of W, m, v (B × n elements, rows of d contiguous) from the gradient G·g_mul (rows
    of d at row stride sgr); streams at copy bandwidth, and writes the fp16 operand copy of the new W."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row = offs // d
    col = offs - row * d
    w = adam_step(tl.load(G + b * sgb + row * sgr + col, mask=mask, other=0.0).to(tl.float32) * g_mul,
                  WIN + b * swib + offs,
                  M + b * swb + offs, V + b * swb + offs, WOUT + b * swb + offs, mask,
                  neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
    if WRITE_WH:
        tl.store(WHOUT + b * shob + row * shoc + col, w.to(WHOUT.dtype.element_ty), mask=mask)
