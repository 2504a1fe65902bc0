"""The split design, the fp16 modes' default: two GEMMs a step and no recomputation.

The softmax of step t is taken against a reference known before the step, r_i = step t-1's log-sum-exp lse_i
(step 1: one lse launch on the global head). Per step, for B points (x: (B, k, d) fp16):

  forward  (grid ⌈k/f_bm⌉ × B; a program owns f_bm neighbour rows × all C):
           E = exp(x Whᵀ + c - r) in fp16 (stored through TMA descriptors on Hopper), L_i = Σ_c E_ic, so
           lse_i = r_i + log L_i (the next reference); XB = [x / L, 1 / L] in fp16 (d + 1 columns); then
           `split_label_kernel` writes E_{i,y_i} - L_i at each label entry. Now (softmax - onehot)_ic = E_ic / L_i
           exactly, and k·∇W, k·∇c are the columns of Eᵀ XB.
  gradient (grid ⌈C/bc⌉ × ⌈(d+1)/bd⌉ × B):  one plain pipelined GEMM Eᵀ XB, both operands in memory; k·∇W goes
           to G (fp16 when k·max|x| fits fp16: checked by the dispatch, else fp32); the program holding column d
           takes c's Adam step.
  Adam     (elementwise, streaming):  fp32 state: W, m, v and the fp16 copy of the new W (common_kernels'
           `adam_elem_kernel`); fp16 state ("fp16-state", `adam_half_kernel`): k·m and k·√v in fp16 and W as
           hi + lo, two fp16 numbers (hi is the next step's dot operand; hi + lo holds W to ~2^-22 relative or
           6e-8 absolute), 9 instead of 14 bytes of optimiser traffic per weight and step.

If |lse - r| > 11 anywhere (fp16's range), or x / L leaves fp16's range, the point is flagged in ws.ovf and the
dispatch recomputes it with the flash design.
"""

from __future__ import annotations

import torch

from harness.ttt.fused.buffers import HalfAdamState, SplitBuffers
from harness.ttt.fused.fp16_common import Fp16Run, launch_adam_fp32_state, launch_lse, operand, step_inputs
from harness.ttt.fused.launch import cdiv, launch_options, strides

XB_STEP = 64  # XB columns per step of the forward's tail (128 and 256 measured no faster)
LABEL_BLOCK = 1024  # rows per program of `split_label_kernel`


def prepare(run: Fp16Run[SplitBuffers]) -> tuple[object, object]:
    """Per batch, before step 1: clear the overflow flags, take each row's max |x| (the forward's range check of
    x / L), and make the (E, XB) arguments of the forward: TMA descriptors with blocks.f_tma, else the tensors."""
    ws, bl = run.ws, run.blocks
    B, k, _ = run.x.shape
    ws.ovf.zero_()
    ws.xmax[:, :k].copy_(run.x.abs().amax(dim=-1))
    if not bl.f_tma:
        return ws.E, ws.XB
    from triton.tools.tensor_descriptor import TensorDescriptor

    e_full = ws.E.as_strided((B, k, ws.E.stride(1)), ws.E.stride())
    return (TensorDescriptor(e_full, list(e_full.shape), list(e_full.stride()), [1, bl.f_bm, bl.f_bn]),
            TensorDescriptor(ws.XB, list(ws.XB.shape), list(ws.XB.stride()), [1, bl.f_bm, XB_STEP]))


def launch_forward(run: Fp16Run[SplitBuffers], t: int, e_arg: object, xb_arg: object):
    """Step t's forward (E, XB, ws.lse ← this step's lse) and label kernels. Returns the forward's handle."""
    from harness.ttt.fused import split_kernels as K

    x, ws, bl = run.x, run.ws, run.blocks
    B, k, d = x.shape
    C = run.weight.shape[0]
    wh, hst = operand(run, t)
    io = step_inputs(run, t)
    handle = K.split_forward_kernel[(cdiv(k, bl.f_bm), B)](
        X=x, WH=wh, CB=io.c_in, Y=run.y, R=ws.lse, E=e_arg, XB=xb_arg, OVF=ws.ovf, EY=ws.ey, XMAX=ws.xmax,
        k=k, C=C, d=d,
        **strides("sx", x.stride(), "bkd"), **strides("sh", hst, "bcd"), **strides("sc", io.c_strides, "bc"),
        **strides("sy", run.y.stride(), "bk"), srb=ws.lse.stride(0), **strides("se", ws.E.stride(), "bkc"),
        sqb=ws.XB.stride(0), sqk=ws.XB.stride(1),
        BM=bl.f_bm, BN=bl.f_bn, BK=bl.f_bk, BX=XB_STEP, DX=ws.XB.shape[2], EMU=run.interpret, TMA=bl.f_tma,
        **launch_options(run.interpret, num_warps=bl.f_warps, num_stages=bl.f_stages),
    )
    K.split_label_kernel[(cdiv(B * k, LABEL_BLOCK),)](
        E=ws.E, EY=ws.ey, Y=run.y, n=B * k, k=k, C=C, seb=ws.E.stride(0), sek=ws.E.stride(1),
        srb=ws.ey.stride(0), syb=run.y.stride(0), BLOCK=LABEL_BLOCK, **launch_options(run.interpret, num_warps=4),
    )
    return handle


def launch_grad(run: Fp16Run[SplitBuffers], t: int):
    """Step t's gradient kernel: ws.G = k·∇W (Eᵀ XB), and c's Adam step. Returns Triton's handle."""
    from harness.ttt.fused import split_kernels as K

    ws, bl = run.ws, run.blocks
    B, k, d = run.x.shape
    C = run.weight.shape[0]
    io = step_inputs(run, t)
    return K.split_grad_kernel[(cdiv(C, bl.bc), cdiv(d + 1, bl.bd), B)](
        E=ws.E, XB=ws.XB, CIN=io.c_in, COUT=io.c_out, MC=ws.Mc, VC=ws.Vc, G=ws.G, k=k, C=C, d=d,
        **strides("se", ws.E.stride(), "bkc"), sqb=ws.XB.stride(0), sqk=ws.XB.stride(1),
        **strides("sci", io.c_strides, "bc"), **strides("sc", io.c_out.stride(), "bc"),
        sgb=ws.G.stride(0), sgc=ws.G.stride(1), inv_k=1.0 / k, **io.adam,
        BC=bl.bc, BD=bl.bd, BKK=bl.bkk, EMU=run.interpret, **io.flags,
        **launch_options(run.interpret, num_warps=bl.warps, num_stages=bl.stages),
    )


def launch_adam(run: Fp16Run[SplitBuffers], t: int):
    """Step t's Adam step of W from ws.G = k·∇W, with the run's Adam state. Returns Triton's handle."""
    from harness.ttt.fused import split_kernels as K

    ws, bl, cfg = run.ws, run.blocks, run.cfg
    B, k, d = run.x.shape
    state = ws.state
    if not isinstance(state, HalfAdamState):
        return launch_adam_fp32_state(run, t, g_mul=1.0 / k)
    io = step_inputs(run, t)
    C, dp = state.hi.shape[1], state.hi.stride(1)
    a = io.adam
    return K.adam_half_kernel[(cdiv(C * dp, bl.adam_block), B)](
        G=ws.G, WIN=io.W_in, HI=state.hi, LO=state.lo, M=state.m, S=state.s, n=C * dp,
        swib=io.w_strides[0], swic=io.w_strides[1], sb=state.hi.stride(0), sgb=ws.G.stride(0), sgc=ws.G.stride(1),
        k_wd=k * cfg.weight_decay, neg_step=a["neg_step"], bc2_sqrt=a["bc2_sqrt"], omb1=a["omb1"],
        beta2=a["beta2"], omb2=a["omb2"], k_eps=k * cfg.eps,
        D=d, DP=dp, BLOCK=bl.adam_block, **io.flags, **launch_options(run.interpret, num_warps=bl.adam_warps),
    )


def finish(run: Fp16Run[SplitBuffers]) -> None:
    """After the last step: with fp16 state, ws.W = hi + lo (added in fp32)."""
    state = run.ws.state
    if isinstance(state, HalfAdamState):
        run.ws.W.copy_(state.hi).add_(state.lo)


def run_steps(run: Fp16Run[SplitBuffers], first_grad_event: torch.cuda.Event | None = None) -> None:
    """cfg.steps Adam steps of all B heads into ws.W and ws.final_c(cfg.steps); ws.ovf[b] > 0 afterwards marks the
    points to recompute. first_grad_event is recorded after step 1's gradient (FusedHeadTTT starts the next part
    of the batch there, so the parts run out of phase)."""
    e_arg, xb_arg = prepare(run)
    for t in range(1, run.cfg.steps + 1):
        if t == 1:
            launch_lse(run, t)  # the first reference: the global head's lse
        launch_forward(run, t, e_arg, xb_arg)
        launch_grad(run, t)
        if t == 1 and first_grad_event is not None:
            first_grad_event.record()
        launch_adam(run, t)
    finish(run)
