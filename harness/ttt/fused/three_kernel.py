"""The three-kernel design (precisions ieee, tf32x3, tf32, bf16): Z and Dᵀ stored, Adam in the GEMM's epilogue.

For B points, heads W (B, C, d), c (B, C), neighbour features X (B, k, d), labels y (B, k), each Adam step is:

  forward  (grid ⌈k/fwd_bm⌉ × ⌈C/fwd_bn⌉ × B):
      Z = X Wᵀ + c                              stored once (fp32; bf16 in the bf16 mode)
      for each row i and column tile t: mx[i,t] = max_{c∈t} Z[i,c], s[i,t] = Σ_{c∈t} exp(Z[i,c] - mx[i,t])
  D        (grid ⌈C/d_bc⌉ × B; each program runs down all k rows of one column tile):
      lse_i = M_i + log Σ_t s[i,t] exp(mx[i,t] - M_i),  M_i = max_t mx[i,t]    (from the partials, tiny)
      Dᵀ[c,i] = (exp(Z[i,c] - lse_i) - [y_i = c]) / k      stored k-major;  ∇c = Σ_i D[i,c] (no atomics)
  GEMM + Adam  (grid ⌈C/grad_bc⌉ × ⌈d/grad_bd⌉ × B; each program owns one tile of W, m, v):
      ∇W tile = Σ_i Dᵀ[tile_c, i] X[i, tile_d]       (tensor-core dots, fp32 accumulation, plain k loop)
      then, still in registers, torch.optim.Adam's update of that tile (and of c on the tile_d = 0 programs):
      m ← m + (1-β1)(g - m);  v ← β2 v + (1-β2) g²;  W ← W - lr/(1-β1^t) · m / (√v / √(1-β2^t) + eps)

∇W never touches device memory. Step 1 reads the global head directly (batch stride 0: no B copies of W are
made) and does not read m, v (they are zero). The point index is the slowest grid axis, so all tiles of one
point run together and share X, Z, Dᵀ through L2. Per point and step the design moves W, m, v twice
(6·C·d·4 bytes, the fp32 optimiser state), Z and Dᵀ twice each and X twice.

Dot precision: "ieee" fp32 FMA (the same function as the torch engine up to summation order); "tf32x3" 3-pass
split tf32 (≈ fp32); "tf32" tf32 operands (10-bit mantissa); "bf16" bf16 operands, bf16 Z and Dᵀ. fp32
accumulation, W, m, v, c and all softmax / Adam arithmetic in every mode.
"""

from __future__ import annotations

import torch

from harness.ttt.fused.blocks import FusedBlocks
from harness.ttt.fused.buffers import ThreeKernelBuffers
from harness.ttt.fused.launch import adam_constants, cdiv, launch_options, next_pow2, round_up, strides
from harness.ttt.linear import HeadTTTConfig


def operand_dtype(precision: str) -> torch.dtype:
    """The dtype of X and of Z, Dᵀ: bf16 in the bf16 mode, fp32 otherwise."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def allocate(B: int, k: int, C: int, d: int, precision: str, blocks: FusedBlocks, device,
             z_dtype: torch.dtype | None = None) -> ThreeKernelBuffers:
    return ThreeKernelBuffers.allocate(B, k, C, d, z_dtype or operand_dtype(precision), cdiv(C, blocks.fwd_bn),
                                       device)


def x_for_gemm(x: torch.Tensor, blocks: FusedBlocks) -> torch.Tensor:
    """x (B, k, d) or, with blocks.x_t, the same values as a (B, k, d) view of a (B, d, k_padded) buffer (both
    operands of the GEMM kernel are then k-major)."""
    if not blocks.x_t:
        return x
    B, k, d = x.shape
    xt = torch.empty(B, d, round_up(k, 16), dtype=x.dtype, device=x.device)[:, :, :k]
    xt.copy_(x.transpose(1, 2))
    return xt.transpose(1, 2)


def _dots(precision: str, interpret: bool) -> dict:
    bf16 = precision == "bf16"
    return {"PREC": "tf32" if bf16 else precision, "BF16": bf16, "EMU_BF16": interpret}


def launch_forward(x, W_in, w_strides, c_in, c_strides, ws: ThreeKernelBuffers, precision: str, blocks: FusedBlocks,
                   interpret: bool):
    """ws.Z = x W_inᵀ + c_in and the row partials. Returns Triton's launch handle."""
    from harness.ttt.fused import three_kernel_kernels as K

    B, k, d = x.shape
    C = ws.Z.shape[2]
    return K.forward_kernel[(cdiv(k, blocks.fwd_bm), ws.pmax.shape[2], B)](
        X=x, W=W_in, CB=c_in, Z=ws.Z, PMAX=ws.pmax, PSUM=ws.psum, k=k, C=C, d=d,
        **strides("sx", x.stride(), "bkd"), **strides("sw", w_strides, "bcd"), **strides("sc", c_strides, "bc"),
        **strides("sz", ws.Z.stride(), "bkc"), spb=ws.pmax.stride(0), spk=ws.pmax.stride(1),
        BM=blocks.fwd_bm, BN=blocks.fwd_bn, BK=blocks.fwd_bk, **_dots(precision, interpret),
        **launch_options(interpret, num_warps=blocks.fwd_warps, num_stages=blocks.fwd_stages),
    )


def launch_dgrad(y, ws: ThreeKernelBuffers, blocks: FusedBlocks, interpret: bool):
    """ws.DT = ((softmax(Z) - onehot(y)) / k)ᵀ and ws.gc = ∇c."""
    from harness.ttt.fused import three_kernel_kernels as K

    B, k, C = ws.Z.shape
    nt = ws.pmax.shape[2]
    return K.dgrad_kernel[(cdiv(C, blocks.d_bc), B)](
        Z=ws.Z, PMAX=ws.pmax, PSUM=ws.psum, Y=y, DT=ws.DT, GC=ws.gc, k=k, C=C, NT=nt,
        **strides("sz", ws.Z.stride(), "bkc"), spb=ws.pmax.stride(0), spk=ws.pmax.stride(1),
        **strides("sy", y.stride(), "bk"), **strides("sd", ws.DT.stride(), "bck"), sgb=ws.gc.stride(0),
        inv_k=1.0 / k, BC=blocks.d_bc, BK=blocks.d_bk, NTP=next_pow2(nt),
        **launch_options(interpret, num_warps=blocks.d_warps),
    )


def launch_gemm_adam(xg, W_in, w_strides, c_in, c_strides, ws: ThreeKernelBuffers, cfg: HeadTTTConfig, t: int,
                     precision: str, blocks: FusedBlocks, interpret: bool):
    """∇W = Dᵀ x and Adam's step t >= 1 into ws.W, ws.M, ws.V, ws.c, ws.Mc, ws.Vc."""
    from harness.ttt.fused import three_kernel_kernels as K

    B, k, d = xg.shape
    C = ws.Z.shape[2]
    return K.gemm_adam_kernel[(cdiv(C, blocks.grad_bc), cdiv(d, blocks.grad_bd), B)](
        X=xg, DT=ws.DT, GC=ws.gc, WIN=W_in, WOUT=ws.W, M=ws.M, V=ws.V, CIN=c_in, COUT=ws.c, MC=ws.Mc, VC=ws.Vc,
        k=k, C=C, d=d,
        **strides("sx", xg.stride(), "bkd"), **strides("sd", ws.DT.stride(), "bck"), sgb=ws.gc.stride(0),
        **strides("swi", w_strides, "bcd"), **strides("sw", ws.W.stride(), "bcd"),
        **strides("sci", c_strides, "bc"), **strides("sc", ws.c.stride(), "bc"), **adam_constants(cfg, t),
        BC=blocks.grad_bc, BD=blocks.grad_bd, BK=blocks.grad_bk, **_dots(precision, interpret),
        FIRST=t == 1, HAS_WD=cfg.weight_decay != 0,
        **launch_options(interpret, num_warps=blocks.grad_warps, num_stages=blocks.grad_stages),
    )


def run_steps(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ws: ThreeKernelBuffers,
              cfg: HeadTTTConfig, precision: str, blocks: FusedBlocks, interpret: bool) -> None:
    """cfg.steps Adam steps of all B heads into ws.W / ws.c (x: (B, k, d) in operand_dtype, y: (B, k) int64)."""
    xg = x_for_gemm(x, blocks)
    for t in range(1, cfg.steps + 1):
        if t == 1:  # the global head, shared by all B points (batch stride 0)
            W_in, wst = weight, (0, weight.stride(0), weight.stride(1))
            c_in, cst = bias, (0, bias.stride(0))
        else:
            W_in, wst = ws.W, ws.W.stride()
            c_in, cst = ws.c, ws.c.stride()
        launch_forward(x, W_in, wst, c_in, cst, ws, precision, blocks, interpret)
        launch_dgrad(y, ws, blocks, interpret)
        launch_gemm_adam(xg, W_in, wst, c_in, cst, ws, cfg, t, precision, blocks, interpret)
