"""Triton kernel of the flash design (harness/ttt/fused/flash.py has the maths): `flash_grad_kernel`, ∇W and ∇c
without Z or D in memory. Its other launches are common_kernels' `lse_kernel` and `adam_elem_kernel`.
Imported lazily (this module imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl

from harness.ttt.fused.common_kernels import adam_step


@triton.jit
def flash_grad_kernel(
    X, WH, LSE, Y,
    CIN, COUT, MC, VC, G,
    k, C, d,
    sxb, sxk, sxd,
    shb, shc, shd,
    slb, syb, syk,
    scib, scic,
    scb, scc,
    sgb, sgc, sgd,
    inv_k, neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd,
    BC: tl.constexpr, DCH: tl.constexpr, BKK: tl.constexpr,
    EMU: tl.constexpr, FIRST: tl.constexpr, HAS_WD: tl.constexpr,
):
    """∇W / k and ∇c of BC classes (all d) of one point, without Z or D in memory (the flash-attention shape):

        for each chunk of BKK neighbour rows i:
            S  = W[cols] X[i]ᵀ + c[cols]                  (BC × BKK; from the fp16 operand copy WH of W)
            P  = exp(S - lse[i]) - [y_i = col]             (softmax - onehot, transposed; never stored)
            ∇c += Σ_i P;   ∇W[cols] += P X[i]              (fp32 accumulation)

    d is held as four column chunks of DCH (d <= 4·DCH): four accumulators. ∇W / k goes to G (rows of d) for
    `adam_elem_kernel`; ∇c's Adam step runs here. WH and c are read from buffers this launch does not write
    (the caller alternates two copies), so no program reads a tile another program is updating."""
    pc = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    X += b * sxb
    WH += b * shb
    LSE += b * slb
    Y += b * syb
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
        else:
            acc0 = tl.dot(ph, x0, acc0)
            acc1 = tl.dot(ph, x1, acc1)
            acc2 = tl.dot(ph, x2, acc2)
            acc3 = tl.dot(ph, x3, acc3)

    gp = G + b * sgb + rc[:, None] * sgc  # ∇W / k, rows of d; W's Adam step is `adam_elem_kernel`'s
    tl.store(gp + r0[None, :] * sgd, acc0 * inv_k, mask=mask_c[:, None] & m0[None, :])
    tl.store(gp + r1[None, :] * sgd, acc1 * inv_k, mask=mask_c[:, None] & m1[None, :])
    tl.store(gp + r2[None, :] * sgd, acc2 * inv_k, mask=mask_c[:, None] & m2[None, :])
    tl.store(gp + r3[None, :] * sgd, acc3 * inv_k, mask=mask_c[:, None] & m3[None, :])
    adam_step(gc * inv_k, CIN + rc * scic, MC + rc * scc, VC + rc * scc, COUT + rc * scc, mask_c,
              neg_step, bc2_sqrt, omb1, beta2, omb2, eps, wd, FIRST, HAS_WD)
