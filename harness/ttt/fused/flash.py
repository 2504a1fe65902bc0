"""The flash design (fp16 operands, fp32 Adam state): Z and D never reach memory. The fp16 modes run it for the
points whose split-design reference overflowed (see split.py), and on request (`FlashBlocks(design="flash")`).

Per step t, for B points (x: (B, k, d) fp16, one fp16 copy of W as the dot operand):

  lse       (grid ⌈k/lse_bm⌉ × B):  lse_i = log Σ_c exp(x_i Whᵀ_c + c_c), an online softmax over class tiles
  gradient  (grid ⌈C/bc⌉ × B; a program owns bc classes × all d):  for each chunk of bkk neighbours,
            S = Wh X_chunkᵀ + c, P = exp(S - lse) - onehot (registers only), ∇W += P X_chunk, ∇c += Σ P;
            ∇W / k goes to G (fp32) and ∇c's Adam step runs here
  Adam      (elementwise, streaming):  W, m, v from G, plus the fp16 copy of the new W (two copies alternate, as
            do two copies of c, so no program reads a tile another program of the launch is writing)

Three GEMM-sized products a step (S twice). fp16 dot operands, fp32 accumulation, fp32 W, m, v.
"""

from __future__ import annotations

from harness.ttt.fused.buffers import FlashBuffers
from harness.ttt.fused.fp16_common import Fp16Run, launch_adam_fp32_state, launch_lse, operand, step_inputs
from harness.ttt.fused.launch import cdiv, launch_options, next_pow2, strides


def launch_grad(run: Fp16Run[FlashBuffers], t: int):
    """Step t's gradient kernel: ws.G = ∇W / k, and c's Adam step. Returns Triton's handle."""
    from harness.ttt.fused import flash_kernels as K

    x, ws, bl = run.x, run.ws, run.blocks
    B, k, d = x.shape
    C = run.weight.shape[0]
    wh, hst = operand(run, t)
    io = step_inputs(run, t)
    return K.flash_grad_kernel[(cdiv(C, bl.bc), B)](
        X=x, WH=wh, LSE=ws.lse, Y=run.y, CIN=io.c_in, COUT=io.c_out, MC=ws.Mc, VC=ws.Vc, G=ws.G, k=k, C=C, d=d,
        **strides("sx", x.stride(), "bkd"), **strides("sh", hst, "bcd"), slb=ws.lse.stride(0),
        **strides("sy", run.y.stride(), "bk"), **strides("sci", io.c_strides, "bc"),
        **strides("sc", io.c_out.stride(), "bc"), **strides("sg", ws.G.stride(), "bcd"),
        inv_k=1.0 / k, **io.adam,
        BC=bl.bc, DCH=max(16, next_pow2(cdiv(d, 4))), BKK=bl.bkk, EMU=run.interpret, **io.flags,
        **launch_options(run.interpret, num_warps=bl.warps, num_stages=bl.stages),
    )


def run_steps(run: Fp16Run[FlashBuffers]) -> None:
    """cfg.steps Adam steps of all B heads into ws.W and ws.final_c(cfg.steps)."""
    for t in range(1, run.cfg.steps + 1):
        launch_lse(run, t)
        launch_grad(run, t)
        launch_adam_fp32_state(run, t, g_mul=1.0)
