"""Fused GPU fast path of batched linear-head TTT (Triton): `batched_head_ttt`'s function (harness/ttt/linear.py)
in a few kernels a step instead of ~10 torch ops, for B test points at once.

Precision modes (`precision=`) and the design each runs:
  "ieee"        fp32 FMA dots: the exact path (the torch engine's function up to summation order)   three_kernel
  "tf32x3"      3-pass split-tf32 dots, ≈ fp32                                                       three_kernel
  "tf32"        tf32 dots (10-bit mantissa operands), fp32 Z and Dᵀ                                 three_kernel
  "bf16"        bf16 operands, bf16 Z and Dᵀ                                                         three_kernel
  "fp16"        fp16 operands and softmax / gradient intermediates, fp32 W, m, v                     split
  "fp16-state"  "fp16" plus Adam's state in fp16 (k·m, k·√v; W as hi + lo)                          split
Accumulation is fp32 in every mode. Modes that round dot operands report agreement with the fp32 loop
(benchmarks/ttt_linear.py) rather than equality; which of them `--engine auto` picks per GPU, and why, is
harness/ttt/head_engines.py's. fp16 inputs must stay below 60,000 in magnitude (checked: `FP16_MAX`).

Designs (one module each, its Triton kernels beside it in <design>_kernels.py; common_kernels.py holds Adam's
arithmetic, the log-sum-exp and the streaming Adam kernel):
  three_kernel.py  forward (Z = X Wᵀ + c, softmax partials) · D (Dᵀ, ∇c) · GEMM ∇W = Dᵀ X with Adam in its
                   epilogue (∇W never reaches memory)
  split.py         forward E = exp(S - r) against the previous step's log-sum-exp, XB = X / L · one GEMM Eᵀ XB
                   (k·∇W, k·∇c) · streaming Adam; two GEMMs a step, no recomputation
  flash.py         lse · a gradient kernel that recomputes S and never stores Z or D · streaming Adam; runs the
                   points whose split reference left fp16's range (flagged by the split forward)
buffers.py allocates each design's buffers (only those its mode uses); blocks.py holds the tiles; dispatch.py
picks the design and runs the range checks.

Entry points:
  fused_head_ttt(weight, bias, feats, labels, query, cfg, return_heads=False, *, precision=...)
      `batched_head_ttt`'s signature; CPU tensors run `batched_head_ttt` unless interpret=True (Triton's numpy
      interpreter, TRITON_INTERPRET=1 set before triton is imported: the CPU tests).
  FusedHeadTTT(weight, bias, cfg, batch, precision=...)(feats, labels, query)
      static buffers for a fixed batch size and the whole TTT replayed as one CUDA graph (the fastest form
      for repeated batches; batch 128-256 for the fp16 modes, which split it over two streams).
  fused_engine(precision): `fused_head_ttt` at one precision with `batched_head_ttt`'s signature, as
      harness/ttt/head_engines.py registers it ("fused-<precision>").
"""

from harness.ttt.fused.blocks import FP16_PRECISIONS, PRECISIONS, FlashBlocks, FusedBlocks, default_blocks
from harness.ttt.fused.dispatch import FP16_MAX, FusedHeadTTT, fused_engine, fused_head_ttt

__all__ = ["FP16_MAX", "FP16_PRECISIONS", "PRECISIONS", "FlashBlocks", "FusedBlocks", "FusedHeadTTT",
           "default_blocks", "fused_engine", "fused_head_ttt"]
