"""What the two fp16 designs (flash, split) share on the host: one batch's run, each step's inputs, the
log-sum-exp launch and the streaming fp32-state Adam launch."""

from __future__ import annotations

import dataclasses
from typing import Generic, NamedTuple, TypeVar

import torch

from harness.ttt.fused.blocks import FlashBlocks
from harness.ttt.fused.buffers import FlashBuffers, Fp32AdamState, SplitBuffers, batch_part
from harness.ttt.fused.launch import adam_constants, cdiv, launch_options, strides
from harness.ttt.linear import HeadTTTConfig

BuffersT = TypeVar("BuffersT", bound=FlashBuffers | SplitBuffers)


@dataclasses.dataclass(frozen=True)
class Fp16Run(Generic[BuffersT]):
    """One batch of B points through an fp16 design: the global head weight (C, d) fp32, its fp16 copy weight_h
    (step 1's dot operand), bias (C,); neighbour features x (B, k, d) fp16, labels y (B, k) int64; the buffers."""

    weight: torch.Tensor
    weight_h: torch.Tensor
    bias: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    ws: BuffersT
    cfg: HeadTTTConfig
    blocks: FlashBlocks
    interpret: bool = False

    def part(self, lo: int, hi: int) -> Fp16Run[BuffersT]:
        """The same run for points lo..hi-1 (views of the inputs and buffers)."""
        return dataclasses.replace(self, x=self.x[lo:hi], y=self.y[lo:hi], ws=batch_part(self.ws, lo, hi))


class StepInputs(NamedTuple):
    """Step t's fp32 W and c with their strides (step 1: the global head, batch stride 0, so no B copies are
    made), the copy of c it writes, torch.optim.Adam's constants and the kernels' step flags."""

    W_in: torch.Tensor
    w_strides: tuple[int, ...]
    c_in: torch.Tensor
    c_strides: tuple[int, ...]
    c_out: torch.Tensor
    adam: dict[str, float]
    flags: dict[str, bool]


def step_inputs(run: Fp16Run, t: int) -> StepInputs:
    ws = run.ws
    if t == 1:
        W_in, wst = run.weight, (0, *run.weight.stride())
        c_in, cst = run.bias, (0, run.bias.stride(0))
    else:
        W_in, wst = ws.W, ws.W.stride()
        c_in = ws.c2[(t - 1) % 2]
        cst = c_in.stride()
    flags = {"FIRST": t == 1, "HAS_WD": run.cfg.weight_decay != 0}
    return StepInputs(W_in, tuple(wst), c_in, tuple(cst), ws.c2[t % 2], adam_constants(run.cfg, t), flags)


def operand(run: Fp16Run, t: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Step t's fp16 dot operand copy of W and its strides: step 1 the global head's (batch stride 0); then the
    copy the previous step's Adam wrote (fp32 state: one of two alternating copies; fp16 state: hi)."""
    if t == 1:
        return run.weight_h, (0, *run.weight_h.stride())
    state = run.ws.state
    wh = state.Wh[(t - 1) % 2] if isinstance(state, Fp32AdamState) else state.hi
    return wh, tuple(wh.stride())


def launch_lse(run: Fp16Run, t: int):
    """ws.lse = the log-sum-exp of x Whᵀ + c per neighbour row (step t's inputs). Returns Triton's handle."""
    from harness.ttt.fused import common_kernels as K

    x, bl = run.x, run.blocks
    B, k, d = x.shape
    wh, hst = operand(run, t)
    io = step_inputs(run, t)
    return K.lse_kernel[(cdiv(k, bl.lse_bm), B)](
        X=x, W=wh, CB=io.c_in, LSE=run.ws.lse, k=k, C=run.weight.shape[0], d=d,
        **strides("sx", x.stride(), "bkd"), **strides("sw", hst, "bcd"), **strides("sc", io.c_strides, "bc"),
        slb=run.ws.lse.stride(0),
        BM=bl.lse_bm, BN=bl.lse_bn, BK=bl.lse_bk, PREC="tf32", EMU=run.interpret,
        **launch_options(run.interpret, num_warps=bl.lse_warps, num_stages=bl.lse_stages),
    )


def launch_adam_fp32_state(run: Fp16Run, t: int, g_mul: float):
    """Adam's step t of W, m, v from the gradient buffer ws.G times g_mul, streaming; also writes the fp16 operand
    copy of the new W that step t + 1 reads (none after the last step)."""
    from harness.ttt.fused import common_kernels as K

    ws, bl = run.ws, run.blocks
    state = ws.state
    assert isinstance(state, Fp32AdamState), "fp32 Adam state"
    B, C, d = ws.W.shape
    io = step_inputs(run, t)
    wh_out = state.Wh[t % 2]
    return K.adam_elem_kernel[(cdiv(C * d, bl.adam_block), B)](
        G=ws.G, WIN=io.W_in, WOUT=ws.W, WHOUT=wh_out, M=state.M, V=state.V, n=C * d, d=d,
        swib=io.w_strides[0], swb=ws.W.stride(0), shob=wh_out.stride(0), shoc=wh_out.stride(1),
        sgb=ws.G.stride(0), sgr=ws.G.stride(1), g_mul=g_mul, **io.adam,
        BLOCK=bl.adam_block, **io.flags, WRITE_WH=t < run.cfg.steps,
        **launch_options(run.interpret, num_warps=bl.adam_warps),
    )

