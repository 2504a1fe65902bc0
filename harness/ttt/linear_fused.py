"""Fused GPU fast path of batched linear-head TTT (Triton): the same maths as harness/ttt/linear.py.

For B test points at once, heads W (B, C, d), c (B, C), neighbour features X (B, k, d), labels y (B, k),
each of `steps` full-batch Adam steps is three kernels instead of ~10 torch ops:

  forward  (grid ⌈k/BM⌉ × ⌈C/BN⌉ × B):
      Z = X Wᵀ + c                              stored once (fp32; bf16 in the bf16 mode)
      for each row i and column tile t: mx[i,t] = max_{c∈t} Z[i,c], s[i,t] = Σ_{c∈t} exp(Z[i,c] - mx[i,t])
  D        (grid ⌈C/BC⌉ × B; each program runs down all k rows of one column tile):
      lse_i = M_i + log Σ_t s[i,t] exp(mx[i,t] - M_i),  M_i = max_t mx[i,t]    (from the partials, tiny)
      Dᵀ[c,i] = (exp(Z[i,c] - lse_i) - [y_i = c]) / k      stored k-major;  ∇c = Σ_i D[i,c] (no atomics)
  GEMM + Adam  (grid ⌈C/BC⌉ × ⌈d/BD⌉ × B; each program owns one (BC × BD) tile of W, m, v):
      ∇W tile = Σ_i Dᵀ[tile_c, i] X[i, tile_d]       (tensor-core dots, fp32 accumulation, plain k loop)
      then, still in registers, torch.optim.Adam's update of that tile (and of c on the tile_d = 0 programs):
      m ← m + (1-β1)(g - m);  v ← β2 v + (1-β2) g²;  W ← W - lr/(1-β1^t) · m / (√v / √(1-β2^t) + eps)
∇W never touches device memory. Step 1 reads the global head directly (batch stride 0: no B copies of W
are made) and does not read m, v (they are zero). The point index is the slowest grid axis, so all tiles
of one point run together and share X, Z, Dᵀ through L2. Row strides of Z, Dᵀ and the k-major copy of X
are padded to multiples of 16 elements (k = 600 and C = 1000 are not) so Triton can prove alignment.
The prediction after the last step is one fp32 bmm, as in `batched_head_ttt`.

Bytes of device memory per test point and step (C = 1000, d = 512, k = 600; fp32 = 4 B):
  GEMM + Adam: W, m, v read and written once 6·C·d·4 = 12.3 MB (the irreducible fp32 optimiser state),
               Dᵀ read 2.4 MB, X read 1.2 MB                                                  → 15.9 MB
  forward:     W read 2.0 MB, X read 1.2 MB, Z written 2.4 MB                                 →  5.6 MB
  D:           Z read 2.4 MB, Dᵀ written 2.4 MB                                                →  4.8 MB
  total ≈ 26 MB (tf32 / tf32x3 / ieee; ≈ 21 MB with bf16 Z, Dᵀ, X) against ≈ 16 MB for the SPEC's floor
  (W, m, v once, logits once) — so this design's own floor is 26 MB × 50 steps = 1.3 GB a point, ≈ 3.1k
  points/s at 4 TB/s (H200), ≈ 2.3k at 3 TB/s (H100 copy bandwidth). Measured (H200, B = 128, tf32):
  1,178 points/s, per point and step 4.3 µs forward + 2.8 µs D + 11.2 µs GEMM + Adam (that kernel runs at
  ~1.4 TB/s: 255 registers, spills, one block per SM). See benchmarks/RESULTS.md.
Arithmetic: 2 GEMMs of 2·k·C·d = 0.61 GFLOP each per step and point: 61 GFLOP per point for 50 steps.

The fp16 modes run one of two further designs (FlashBlocks.design), both with fp16 dot operands (X cast
once per batch; an fp16 copy of W written by the Adam kernel) and fp32 accumulation.

"flash" (kernels `_lse`, `_flash4_adam`, `_adam_elem`) never stores Z or D: per step
  lse      (grid ⌈k/64⌉ × B):  lse_i = log Σ_c exp(X_i W_cᵀ + c_c), an online softmax over class tiles;
  gradient (grid ⌈C/64⌉ × B; a program owns 64 classes × all d):  for each 64-row chunk of neighbours,
           S = W X_chunkᵀ + c, P = exp(S - lse) - onehot (registers only), ∇W += P X_chunk, ∇c += Σ P;
           ∇W / k is stored (fp32), and ∇c's Adam step runs here;
  Adam     (elementwise, streaming): W, m, v updated from ∇W, plus the fp16 copy of the new W (two copies
           alternate, as do two copies of c, so no program reads a tile another program is writing).
  Three GEMM-sized products a step (S twice). H100, B = 256: 1,506 points/s.

"split" (kernels `_split_fwd`, `_split_label`, `_split_grad`, then `_adam_elem` or `_adam_half`; the default
of both fp16 modes) does two GEMMs a step and no recomputation. The softmax is taken against a reference known
before the step, r_i = the previous step's lse_i (step 1: one `_lse` launch):
  forward  (grid ⌈k/64⌉ × B; a program owns 64 neighbour rows × all C):  E = exp(X Whᵀ + c - r) in fp16,
           stored row-major through TMA descriptors on Hopper; L_i = Σ_c E_ic, so lse_i = r_i + log L_i
           (the next reference); XB = [X / L, 1 / L] in fp16 (d + 1 columns); `_split_label` then writes
           E_{i,y_i} - L_i at each label entry. Now (softmax - onehot)_ic = E_ic / L_i exactly, and
           ∇W·k, ∇c·k are the columns of Eᵀ XB.
  gradient (grid ⌈C/128⌉ × ⌈(d+1)/128⌉ × B):  a plain pipelined GEMM Eᵀ XB with both operands in memory;
           ∇W·k goes to an fp16 buffer (g_fp16; k·|∇W| <= k·max|x| must fit fp16: checked, else fp32), the
           program holding column d steps c.
  Adam     (elementwise, streaming).
  If |lse - r| > 11 anywhere (fp16's range; not seen in practice), the point is flagged and recomputed by the
  flash design. Bytes per point and step with fp32 Adam state: ~17 MB; H100, B = 256: 2,115 points/s.

Precision "fp16-state" is the split design with Adam's state in fp16 as well (`_adam_half`): k·m and k·√v in
fp16, and W as hi + lo, two fp16 numbers (hi, the next step's dot operand; W kept to ~2^-22 relative or 6e-8
absolute). That is 9 instead of 14 bytes of optimiser traffic per weight and step. Measured on an H100
(B = 256, benchmarks/RESULTS.md): 2,465-2,534 points/s over seven runs (2,482-2,504 with the final code,
i.e. at the 2,500 target within run-to-run noise), 111-138× the one-point loop of the same run, predictions equal
to fp32 batched TTT on all 256 points compared (max |Δlogit| 3.5e-3, as tf32 and fp16); per point and step
forward 3.2 µs, gradient 1.8-2.0 µs, Adam 2.9 µs.

Precision modes (`precision=`):
  "ieee"   fp32 FMA dots: the exact path (same function as the torch engine up to summation order).
  "tf32x3" 3-pass split-tf32 dots: ≈ fp32 accuracy, 3× the tensor-core work of tf32.
  "tf32"   tf32 dots (10-bit mantissa operands, fp32 accumulation), fp32 Z and Dᵀ.
  "bf16"   bf16 operands (X cast once per batch, W cast in registers), bf16 Z and Dᵀ, fp32 accumulation.
  "fp16"   fp16 operands and fp16 softmax / gradient intermediates (split design; flash on request),
           fp32 accumulation, fp32 W, m, v.
  "fp16-state"  "fp16" plus fp16 Adam state as above; the fastest mode.
W, m, v, c and all softmax / Adam arithmetic stay fp32 in every mode but "fp16-state"; non-ieee modes round
dot operands (and intermediates), so they report agreement with the fp32 loop rather than equality. fp16
inputs must stay below 60,000 in magnitude (checked).

On a CPU tensor, `fused_head_ttt` runs `batched_head_ttt` (the exact torch engine) unless
interpret=True, which runs the same Triton kernels under Triton's numpy interpreter (tests; slow; needs
TRITON_INTERPRET=1 in the environment before triton is imported).
Wiring: `fused_head_ttt(..., precision=...)` has `batched_head_ttt`'s signature plus keywords;
`HEAD_TTT_ENGINES.get(name)` gives a callable with exactly that signature for "exact", "fused-ieee",
"fused-tf32x3", "fused-tf32", "fused-bf16", "fused-fp16", "fused-fp16-state"; `FusedHeadTTT` keeps buffers for a
fixed batch size and replays the whole TTT as one CUDA graph (the fastest form for repeated batches; use batch
128-256 for the fp16 modes, which split it over two streams).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from harness.registry import Registry
from harness.ttt.linear import HeadTTTConfig, _check_shapes, batched_head_ttt

PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16", "fp16", "fp16-state")
FLASH_PRECISIONS = ("fp16", "fp16-state")  # modes with fp16 operands (FlashBlocks: the "split" / "flash" designs)
FP16_MAX = 60000.0  # inputs of the fp16 mode must stay below fp16's largest finite value (65504)
HEAD_TTT_ENGINES: Registry = Registry("head TTT engine")


@dataclasses.dataclass(frozen=True)
class FusedBlocks:
    """Tile sizes and launch shapes of the three kernels."""

    fwd_bm: int = 64
    fwd_bn: int = 128
    fwd_bk: int = 32
    fwd_warps: int = 4
    fwd_stages: int = 3
    d_bc: int = 64
    d_bk: int = 64
    d_warps: int = 4
    grad_bc: int = 128
    grad_bd: int = 128
    grad_bk: int = 32
    grad_warps: int = 8
    grad_stages: int = 3
    x_t: bool = True  # the GEMM kernel reads a (B, d, k) copy of X: both of its dot operands are k-major


@dataclasses.dataclass(frozen=True)
class FlashBlocks:
    """Tile sizes and launch shapes of the fp16 designs ("flash" and "split"). The field defaults are the flash
    design's fastest measured on an H100; `default_blocks` gives the split design's (both from
    benchmarks/ttt_linear_flash_diag.py; benchmarks/RESULTS.md)."""

    lse_bm: int = 64  # lse kernel: neighbour rows per program
    lse_bn: int = 256  # classes per inner tile
    lse_bk: int = 32
    lse_warps: int = 4
    lse_stages: int = 3
    bc: int = 64  # gradient kernel: classes per program (it owns all d of each)
    bkk: int = 64  # neighbour rows per inner step
    warps: int = 8
    stages: int = 2
    separate_adam: bool = True  # ∇W to memory, then the streaming Adam kernel (False: in-kernel epilogue)
    adam_block: int = 2048  # elements per program of the Adam kernel
    adam_warps: int = 8
    streams: int = 2  # FusedHeadTTT: run the batch in this many parts on as many streams (kernels of one part
    # overlap those of another)
    maxnreg: int = 0  # register cap of the gradient kernel (0: Triton's choice); lower lets Adam programs of
    # the other stream share its SMs
    diag: int = 0  # timing diagnostics only (see _flash4_adam); outputs are then not TTT results
    design: str = "flash"  # "flash" (lse + gradient kernels) or "split" (`_split_fwd` tiled by the f_* fields,
    # `_split_grad` by bc / bd / bkk / warps / stages; see the module docstring)
    bd: int = 128  # "split": d columns per gradient program
    f_bm: int = 64  # "split": `_split_fwd` tiles
    f_bn: int = 128
    f_bk: int = 64
    f_warps: int = 4
    f_stages: int = 4
    f_tma: bool = False  # store E's tiles through tensor-memory-access descriptors (Hopper's copy engine)
    g_fp16: bool = False  # "split" + separate_adam: ∇W·k stored in fp16 between the GEMM and Adam (needs
    # k·max|feats| < 60,000, checked)
    state: str = "fp32"  # "split" + separate_adam + g_fp16: "fp16" keeps Adam's m, √v (times k) in fp16 and W as
    # hi + lo (two fp16), 9 instead of 14 bytes of optimiser traffic per weight and step (`_adam_half`)

    def __post_init__(self) -> None:
        if self.design not in ("flash", "split"):
            raise ValueError(f"FlashBlocks.design must be 'flash' or 'split', got {self.design!r}")
        if self.design == "split" and (self.bc not in (16, 32, 64, 128) or self.bd not in (16, 32, 64, 128)):
            raise ValueError(f"FlashBlocks: design 'split' needs bc and bd in 16, 32, 64, 128; "
                             f"got {self.bc}, {self.bd}")
        if self.state not in ("fp32", "fp16"):
            raise ValueError(f"FlashBlocks.state must be 'fp32' or 'fp16', got {self.state!r}")
        if self.state == "fp16" and not (self.design == "split" and self.separate_adam and self.g_fp16):
            raise ValueError("FlashBlocks: state 'fp16' needs design 'split', separate_adam and g_fp16")


def default_blocks(precision: str, device=None) -> FusedBlocks | FlashBlocks:
    """The fastest tiles measured per precision (fp16 modes: H100, B = 256, benchmarks/ttt_linear_flash_diag.py;
    others: H200, B = 32, benchmarks/ttt_linear_diag.py). The fp16 modes store through TMA descriptors on
    Hopper and newer GPUs (device capability >= 9) only."""
    if precision in FLASH_PRECISIONS:
        dev = torch.device(device) if device is not None else None
        tma = dev is not None and dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9
        return FlashBlocks(design="split", bc=128, bd=128, bkk=64, warps=8, stages=3, f_tma=tma, g_fp16=True,
                           state="fp16" if precision == "fp16-state" else "fp32")
    if precision == "bf16":
        return FusedBlocks(d_bc=32, d_bk=128, x_t=False)
    return FusedBlocks()


def _next_pow2(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class _Workspace:
    """Device buffers for B heads: W, m, v (B, C, d), c, m_c, v_c, ∇c (B, C), Z (B, k, C), row partials
    (B, k, nt), Dᵀ (B, C, k). Row strides are padded to multiples of 16 elements (Triton then knows the
    rows are aligned and vectorises the loads)."""

    def __init__(self, B: int, k: int, C: int, d: int, z_dtype: torch.dtype, nt: int, device) -> None:
        f32 = {"dtype": torch.float32, "device": device}
        self.W, self.M, self.V = (torch.empty(B, C, d, **f32) for _ in range(3))
        self.c, self.Mc, self.Vc, self.gc = (torch.empty(B, C, **f32) for _ in range(4))
        self.Z = torch.empty(B, k, _round_up(C, 16), dtype=z_dtype, device=device)[:, :, :C]
        self.DT = torch.empty(B, C, _round_up(k, 16), dtype=z_dtype, device=device)[:, :, :k]
        self.pmax = torch.empty(B, k, nt, **f32)
        self.psum = torch.empty(B, k, nt, **f32)


def _x_for_gemm(x: torch.Tensor, blocks: FusedBlocks) -> torch.Tensor:
    """x (B, k, d) or, with blocks.x_t, the same values as a (B, k, d) view of a (B, d, k_padded) buffer."""
    if not blocks.x_t:
        return x
    B, k, d = x.shape
    xt = torch.empty(B, d, _round_up(k, 16), dtype=x.dtype, device=x.device)[:, :, :k]
    xt.copy_(x.transpose(1, 2))
    return xt.transpose(1, 2)


def _default_z_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _launch_fwd(fwd, x, W_in, wst, c_in, cst, ws: _Workspace, precision: str, blocks: FusedBlocks,
                interpret: bool):
    """Forward launch: ws.Z = x W_inᵀ + c_in and the row partials. Returns Triton's launch handle."""
    B, k, d = x.shape
    C = ws.Z.shape[2]
    bf16 = precision == "bf16"
    kw = {} if interpret else {"num_warps": blocks.fwd_warps, "num_stages": blocks.fwd_stages}
    return fwd[(triton_cdiv(k, blocks.fwd_bm), ws.pmax.shape[2], B)](
        x, W_in, c_in, ws.Z, ws.pmax, ws.psum,
        k, C, d,
        *x.stride(), *wst, *cst, *ws.Z.stride(), ws.pmax.stride(0), ws.pmax.stride(1),
        BM=blocks.fwd_bm, BN=blocks.fwd_bn, BK=blocks.fwd_bk, PREC="tf32" if bf16 else precision, BF16=bf16,
        EMU_BF16=interpret, **kw,
    )


def _launch_dgrad(dgrad, y, ws: _Workspace, blocks: FusedBlocks, interpret: bool):
    """D launch: ws.DT = ((softmax(Z) - onehot(y)) / k)ᵀ and ws.gc = ∇c."""
    B, k, C = ws.Z.shape
    nt = ws.pmax.shape[2]
    kw = {} if interpret else {"num_warps": blocks.d_warps}
    return dgrad[(triton_cdiv(C, blocks.d_bc), B)](
        ws.Z, ws.pmax, ws.psum, y, ws.DT, ws.gc,
        k, C, nt,
        *ws.Z.stride(), ws.pmax.stride(0), ws.pmax.stride(1), *y.stride(), *ws.DT.stride(), ws.gc.stride(0),
        1.0 / k,
        BC=blocks.d_bc, BK=blocks.d_bk, NTP=_next_pow2(nt), **kw,
    )


def _launch_gemm(gemm, xg, W_in, wst, c_in, cst, ws: _Workspace, cfg: HeadTTTConfig, t: int, precision: str,
                 blocks: FusedBlocks, interpret: bool):
    """GEMM + Adam launch (Adam step number t >= 1) into ws.W, ws.M, ws.V, ws.c, ws.Mc, ws.Vc."""
    B, k, d = xg.shape
    C = ws.Z.shape[2]
    bf16 = precision == "bf16"
    b1, b2 = cfg.betas
    kw = {} if interpret else {"num_warps": blocks.grad_warps, "num_stages": blocks.grad_stages}
    return gemm[(triton_cdiv(C, blocks.grad_bc), triton_cdiv(d, blocks.grad_bd), B)](
        xg, ws.DT, ws.gc,
        W_in, ws.W, ws.M, ws.V, c_in, ws.c, ws.Mc, ws.Vc,
        k, C, d,
        *xg.stride(), *ws.DT.stride(), ws.gc.stride(0),
        *wst, *ws.W.stride(), *cst, *ws.c.stride(),
        -(cfg.lr / (1 - b1 ** t)), math.sqrt(1 - b2 ** t), 1 - b1, b2, 1 - b2, cfg.eps, cfg.weight_decay,
        BC=blocks.grad_bc, BD=blocks.grad_bd, BK=blocks.grad_bk,
        PREC="tf32" if bf16 else precision, BF16=bf16, EMU_BF16=interpret, FIRST=(t == 1),
        HAS_WD=cfg.weight_decay != 0, **kw,
    )


def _kernels(interpret: bool):
    from harness.ttt import _linear_fused_kernels as K

    if interpret:
        return K.interpreted("fwd"), K.interpreted("dgrad"), K.interpreted("gemm_adam")
    return K.fwd_kernel, K.dgrad_kernel, K.gemm_adam_kernel


def _run_steps(weight, bias, x, y, ws: _Workspace, cfg: HeadTTTConfig, precision: str, blocks: FusedBlocks,
               interpret: bool) -> None:
    """cfg.steps Adam steps of all B heads into ws.W / ws.c (x: (B, k, d) fp32 or bf16, y: (B, k) int64)."""
    fwd, dgrad, gemm = _kernels(interpret)
    xg = _x_for_gemm(x, blocks)
    for t in range(1, cfg.steps + 1):
        if t == 1:  # the global head, shared by all B points (batch stride 0)
            W_in, wst = weight, (0, weight.stride(0), weight.stride(1))
            c_in, cst = bias, (0, bias.stride(0))
        else:
            W_in, wst = ws.W, ws.W.stride()
            c_in, cst = ws.c, ws.c.stride()
        _launch_fwd(fwd, x, W_in, wst, c_in, cst, ws, precision, blocks, interpret)
        _launch_dgrad(dgrad, y, ws, blocks, interpret)
        _launch_gemm(gemm, xg, W_in, wst, c_in, cst, ws, cfg, t, precision, blocks, interpret)


class _FlashWorkspace:
    """Buffers of the flash design for B heads: W, m, v (B, C, d) fp32 (updated in place); two fp16 copies of W
    (the dot operand; step t reads one and writes the other, so no program reads a tile another program of
    the same launch is writing); c twice (same reason), m_c, v_c (B, C); lse (B, k)."""

    def __init__(self, B: int, k: int, C: int, d: int, device) -> None:
        f32 = {"dtype": torch.float32, "device": device}
        self.W, self.M, self.V = (torch.empty(B, C, d, **f32) for _ in range(3))
        dpad = _round_up(d, 16)
        self.Wh = torch.empty(2, B, C, dpad, dtype=torch.float16, device=device)[..., :d]
        self.c2 = torch.empty(2, B, C, **f32)
        self.Mc, self.Vc = (torch.empty(B, C, **f32) for _ in range(2))
        self.lse = torch.empty(B, _round_up(k, 16), **f32)
        self.c = self.c2[0]  # the final bias, set by _run_flash_steps
        self.G = None  # ∇W buffer of the separate-Adam variant, made on first use
        self.E = self.XB = self.Gs = None  # "split" design buffers, made on first use
        self.half: tuple[torch.Tensor, ...] | None = None  # "split" fp16 Adam state, made on first use
        self.ovf = torch.zeros(B, dtype=torch.int32, device=device)  # "split": points whose reference failed
        self.ey = torch.empty(B, _round_up(k, 16), **f32)  # "split": E[i, y_i] - L_i per row
        self.xmax = torch.zeros(B, _round_up(k, 16), **f32)  # "split": max_j |X_ij| per row

    def grad_buffer(self) -> torch.Tensor:
        if self.G is None:
            self.G = torch.empty_like(self.W)
        return self.G

    def split_buffers(self, k: int, grad_out: bool, g_fp16: bool = False):
        """"split" design: E (B, k, C) fp16 and XB (B, k, d + 1) fp16, rows zero-padded to a multiple of 128
        (`_split_grad` reads whole tiles of up to 128 columns), and with grad_out the gradient G (W's layout)."""
        B, C, d = self.W.shape
        if getattr(self, "E", None) is None:
            self.E = torch.zeros(B, k, _round_up(C, 128), dtype=torch.float16, device=self.W.device)[..., :C]
            self.XB = torch.zeros(B, k, _round_up(d + 1, 128), dtype=torch.float16, device=self.W.device)
        if grad_out and getattr(self, "Gs", None) is None:
            self.Gs = torch.empty(B, C, _round_up(d, 16), dtype=torch.float16 if g_fp16 else torch.float32,
                                  device=self.W.device)[..., :d]
        return self.E, self.XB, (self.Gs if grad_out else None)

    def half_state(self) -> tuple[torch.Tensor, ...]:
        """fp16 state of the split design: hi, lo (W = hi + lo), k·m, k·√v, all (B, C, d) with rows padded to 16."""
        if self.half is None:
            B, C, d = self.W.shape
            self.half = tuple(torch.zeros(B, C, _round_up(d, 16), dtype=torch.float16, device=self.W.device)[..., :d]
                              for _ in range(4))
        return self.half

    def part(self, lo: int, hi: int) -> _FlashWorkspace:
        """The same buffers for points lo..hi-1 (views)."""
        sub = object.__new__(_FlashWorkspace)
        sub.W, sub.M, sub.V = self.W[lo:hi], self.M[lo:hi], self.V[lo:hi]
        sub.Wh, sub.c2 = self.Wh[:, lo:hi], self.c2[:, lo:hi]
        sub.Mc, sub.Vc, sub.lse = self.Mc[lo:hi], self.Vc[lo:hi], self.lse[lo:hi]
        sub.c = self.c[lo:hi]
        sub.G = None if self.G is None else self.G[lo:hi]
        sub.half = None if self.half is None else tuple(h[lo:hi] for h in self.half)
        for name in ("E", "XB", "Gs"):
            setattr(sub, name, None if getattr(self, name) is None else getattr(self, name)[lo:hi])
        sub.ovf, sub.ey, sub.xmax = self.ovf[lo:hi], self.ey[lo:hi], self.xmax[lo:hi]
        return sub


def _check_fp16_range(t: torch.Tensor, what: str) -> float:
    big = float(t.detach().abs().amax()) if t.numel() else 0.0
    if not big <= FP16_MAX:  # also catches NaN
        raise ValueError(f"precision 'fp16' needs |{what}| <= {FP16_MAX:g} (fp16 operands); got max {big:g}. "
                         "Use precision 'tf32' for inputs of this range")
    return big


def _state_for(precision: str, blocks: FusedBlocks | FlashBlocks) -> FlashBlocks:
    """The blocks of an fp16 mode: FlashBlocks, whose state the mode names ("fp16-state": state "fp16";
    "fp16": "fp32")."""
    if not isinstance(blocks, FlashBlocks):
        raise ValueError(f"precision {precision!r} runs with FlashBlocks, got {type(blocks).__name__}")
    want = "fp16" if precision == "fp16-state" else "fp32"
    return blocks if blocks.state == want else dataclasses.replace(blocks, state=want)


def _fused_blocks(precision: str, blocks: FusedBlocks | FlashBlocks) -> FusedBlocks:
    """The blocks of a non-fp16 mode: FusedBlocks."""
    if not isinstance(blocks, FusedBlocks):
        raise ValueError(f"precision {precision!r} runs with FusedBlocks, got {type(blocks).__name__}")
    return blocks


def _g_fp16_fits(blocks, k: int, feats_max: float, cfg: HeadTTTConfig | None = None, weight_max: float = 0.0) -> bool:
    """fp16 ∇W·k holds |Σ_i P_ic x_ij| <= k·max|x| (|P| <= 1) only while that stays below fp16's range; with fp16
    Adam state, k·m and k·√v also carry k·wd·|W| (|W| grows by at most ~lr per step: bounded by 10·lr·steps)."""
    if not (blocks.design == "split" and blocks.g_fp16 and blocks.separate_adam):
        return True
    bound = k * feats_max
    if blocks.state == "fp16" and cfg is not None and cfg.weight_decay:
        bound += k * abs(cfg.weight_decay) * (weight_max + 10 * cfg.lr * cfg.steps)
    return bound <= FP16_MAX


def _check_labels(labels: torch.Tensor, C: int) -> None:
    lo, hi = torch.stack([labels.min(), labels.max()]).tolist() if labels.numel() else (0, 0)  # one sync
    if lo < 0 or hi >= C:
        raise ValueError(f"neighbour labels must lie in [0, {C}) (the head's classes); got [{lo}, {hi}]")


XB_STEP = 64  # XB columns per step of `_split_fwd`'s tail (128 and 256 measured no faster)
LAST_LAUNCH: dict = {}  # kernel name -> Triton's handle of its latest launch (registers, spills; diagnostics)


def _step_io(t: int, weight, weight_h, bias, ws: _FlashWorkspace, cfg: HeadTTTConfig):
    """Step t's inputs (W, its fp16 copy, c, with strides; step 1 reads the global head with batch stride 0, so
    no B copies are made), the buffers it writes (the other fp16 copy and c), torch.optim.Adam's constants and
    the kernels' step flags."""
    b1, b2 = cfg.betas
    if t == 1:
        W_in, wst = weight, (0, *weight.stride())
        Wh_in, hst = weight_h, (0, *weight_h.stride())
        c_in, cst = bias, (0, bias.stride(0))
    else:
        W_in, wst = ws.W, ws.W.stride()
        Wh_in, c_in = ws.Wh[(t - 1) % 2], ws.c2[(t - 1) % 2]
        hst, cst = Wh_in.stride(), c_in.stride()
    adam = (-(cfg.lr / (1 - b1 ** t)), math.sqrt(1 - b2 ** t), 1 - b1, b2, 1 - b2, cfg.eps, cfg.weight_decay)
    flags = {"FIRST": t == 1, "HAS_WD": cfg.weight_decay != 0, "WRITE_WH": t < cfg.steps}
    return W_in, wst, Wh_in, hst, c_in, cst, ws.Wh[t % 2], ws.c2[t % 2], adam, flags


def _launch_lse(lse_k, x, Wh_in, hst, c_in, cst, ws: _FlashWorkspace, blocks: FlashBlocks, interpret: bool):
    """ws.lse = the log-sum-exp of x Wh_inᵀ + c_in per neighbour row (`_lse`)."""
    B, k, d = x.shape
    kw = {} if interpret else {"num_warps": blocks.lse_warps, "num_stages": blocks.lse_stages}
    LAST_LAUNCH["lse"] = lse_k[(triton_cdiv(k, blocks.lse_bm), B)](
        x, Wh_in, c_in, ws.lse,
        k, ws.W.shape[1], d,
        *x.stride(), *hst, *cst, ws.lse.stride(0),
        BM=blocks.lse_bm, BN=blocks.lse_bn, BK=blocks.lse_bk, PREC="tf32", EMU=interpret, **kw,
    )


def _run_flash_steps(weight, weight_h, bias, x, y, ws: _FlashWorkspace, cfg: HeadTTTConfig, blocks: FlashBlocks,
                     interpret: bool, only: str | None = None, first_grad_event=None) -> None:
    """cfg.steps Adam steps of all B heads by the flash design into ws.W / ws.c (x: (B, k, d) fp16).

    only="lse", "grad" (gradient kernel alone) or "flash" (gradient + Adam) launches just that part at every
    step (per-kernel timing; not a valid TTT). Blocks of design "split" run `_run_split_steps`."""
    if blocks.design == "split":
        _run_split_steps(weight, weight_h, bias, x, y, ws, cfg, blocks, interpret, only, first_grad_event)
        return
    from harness.ttt import _linear_fused_kernels as K

    lse_k = K.interpreted("lse") if interpret else K.lse_kernel
    grad_k = K.interpreted("flash4_adam") if interpret else K.flash4_adam_kernel
    adam_k = K.interpreted("adam_elem") if interpret else K.adam_elem_kernel
    B, k, d = x.shape
    C = weight.shape[0]
    dch = max(16, _next_pow2(-(-d // 4)))
    kw_f = {} if interpret else {"num_warps": blocks.warps, "num_stages": blocks.stages,
                                 **({"maxnreg": blocks.maxnreg} if blocks.maxnreg else {})}
    G = ws.grad_buffer() if blocks.separate_adam else ws.W
    for t in range(1, cfg.steps + 1):
        W_in, wst, Wh_in, hst, c_in, cst, Wh_out, c_out, adam, flags = _step_io(t, weight, weight_h, bias, ws, cfg)
        if only not in ("flash", "grad"):
            _launch_lse(lse_k, x, Wh_in, hst, c_in, cst, ws, blocks, interpret)
        if only == "lse":
            continue
        LAST_LAUNCH["flash4_adam"] = grad_k[(triton_cdiv(C, blocks.bc), B)](
            x, Wh_in, ws.lse, y,
            W_in, ws.W, Wh_out, ws.M, ws.V, c_in, c_out, ws.Mc, ws.Vc, G,
            k, C, d,
            *x.stride(), *hst, ws.lse.stride(0), *y.stride(),
            *wst, *ws.W.stride(), *Wh_out.stride(), *cst, *c_out.stride(),
            1.0 / k, *adam,
            BC=blocks.bc, DCH=dch, BKK=blocks.bkk, EMU=interpret, GRAD_OUT=blocks.separate_adam,
            **({"DIAG": blocks.diag} if blocks.diag else {}), **flags, **kw_f,
        )
        if blocks.separate_adam and only != "grad":
            n = C * d
            LAST_LAUNCH["adam_elem"] = adam_k[(triton_cdiv(n, blocks.adam_block), B)](
                G, W_in, ws.W, Wh_out, ws.M, ws.V,
                n, d,
                wst[0], ws.W.stride(0), Wh_out.stride(0), Wh_out.stride(1), G.stride(0), G.stride(1), 1.0,
                *adam,
                BLOCK=blocks.adam_block, **flags, **({} if interpret else {"num_warps": blocks.adam_warps}),
            )
    ws.c = ws.c2[cfg.steps % 2]


def _run_split_steps(weight, weight_h, bias, x, y, ws: _FlashWorkspace, cfg: HeadTTTConfig, blocks: FlashBlocks,
                     interpret: bool, only: str | None = None, first_grad_event=None) -> None:
    """cfg.steps Adam steps of all B heads by the "split" design into ws.W / ws.c (x: (B, k, d) fp16).

    Step 1 starts with one lse launch (the reference of `_split_fwd`); every step is `_split_fwd` (E, XB and
    this step's lse, the next step's reference) and `_split_grad` (Eᵀ XB with the Adam epilogue, or to G and
    `_adam_elem`). ws.ovf[b] > 0 afterwards marks points whose reference was off by more than fp16's range
    (see FusedHeadTTT, which recomputes them). only="lse" (`_split_fwd`), "grad" (`_split_grad`) or "flash"
    (`_split_grad` and the Adam launches): timing of one part; not a valid TTT."""
    from harness.ttt import _linear_fused_kernels as K

    def kern(name):
        return K.interpreted(name) if interpret else getattr(K, f"{name}_kernel")

    B, k, d = x.shape
    C = weight.shape[0]
    E, XB, G = ws.split_buffers(k, blocks.separate_adam, blocks.g_fp16)
    half = ws.half_state() if blocks.state == "fp16" else None
    kw_f = {} if interpret else {"num_warps": blocks.f_warps, "num_stages": blocks.f_stages}
    kw_g = {} if interpret else {"num_warps": blocks.warps, "num_stages": blocks.stages}
    kw_a = {} if interpret else {"num_warps": blocks.adam_warps}
    ws.ovf.zero_()
    ws.xmax[:, :k].copy_(x.abs().amax(dim=-1))  # per row, for `_split_fwd`'s range check of X / L
    e_arg, xb_arg = E, XB
    if blocks.f_tma:  # E's and XB's tiles go through the copy engine: (B, k, ·) descriptors
        from triton.tools.tensor_descriptor import TensorDescriptor

        e_full = E.as_strided((B, k, E.stride(1)), E.stride())
        e_arg = TensorDescriptor(e_full, list(e_full.shape), list(e_full.stride()), [1, blocks.f_bm, blocks.f_bn])
        xb_arg = TensorDescriptor(XB, list(XB.shape), list(XB.stride()), [1, blocks.f_bm, XB_STEP])
    for t in range(1, cfg.steps + 1):
        W_in, wst, Wh_in, hst, c_in, cst, Wh_out, c_out, adam, flags = _step_io(t, weight, weight_h, bias, ws, cfg)
        if t == 1:  # the first reference: the global head's lse
            _launch_lse(kern("lse"), x, Wh_in, hst, c_in, cst, ws, blocks, interpret)
        if half is not None and t > 1:  # fp16 state: hi (updated in place) is the dot operand
            Wh_in, hst = half[0], half[0].stride()
        if only in (None, "lse"):
            LAST_LAUNCH["lse"] = kern("split_fwd")[(triton_cdiv(k, blocks.f_bm), B)](
                x, Wh_in, c_in, y, ws.lse, e_arg, xb_arg, ws.ovf, ws.ey, ws.xmax,
                k, C, d,
                *x.stride(), *hst, *cst, *y.stride(), ws.lse.stride(0), *E.stride(), XB.stride(0), XB.stride(1),
                BM=blocks.f_bm, BN=blocks.f_bn, BK=blocks.f_bk, BX=XB_STEP, DX=XB.shape[2], EMU=interpret,
                TMA=blocks.f_tma, **({"DIAG": blocks.diag} if blocks.diag else {}), **kw_f,
            )
            kern("split_label")[(triton_cdiv(B * k, 1024),)](
                E, ws.ey, y, B * k, k, C, E.stride(0), E.stride(1), ws.ey.stride(0), y.stride(0), BLOCK=1024,
                **({} if interpret else {"num_warps": 4}),
            )
        if only in (None, "grad", "flash"):
            Gp = G if G is not None else ws.W
            LAST_LAUNCH["flash4_adam"] = kern("split_grad")[(triton_cdiv(C, blocks.bc), triton_cdiv(d + 1, blocks.bd),
                                                             B)](
                E, XB,
                W_in, ws.W, Wh_out, ws.M, ws.V, c_in, c_out, ws.Mc, ws.Vc, Gp,
                k, C, d,
                *E.stride(), XB.stride(0), XB.stride(1),
                *wst, *ws.W.stride(), *Wh_out.stride(), *cst, *c_out.stride(), Gp.stride(0), Gp.stride(1),
                1.0 / k, *adam,
                BC=blocks.bc, BD=blocks.bd, BKK=blocks.bkk, EMU=interpret, GRAD_OUT=G is not None, **flags, **kw_g,
            )
        if t == 1 and first_grad_event is not None:  # FusedHeadTTT starts its second stream here (out of phase)
            first_grad_event.record()
        if half is not None and only in (None, "flash"):
            hi, lo, m16, s16 = half
            dp = hi.stride(1)
            LAST_LAUNCH["adam_elem"] = kern("adam_half")[(triton_cdiv(C * dp, blocks.adam_block), B)](
                G, W_in, hi, lo, m16, s16, C * dp,
                wst[0], wst[1], hi.stride(0), G.stride(0), G.stride(1),
                k * cfg.weight_decay, adam[0], adam[1], adam[2], adam[3], adam[4], k * cfg.eps,
                D=d, DP=dp, BLOCK=blocks.adam_block, FIRST=t == 1, HAS_WD=cfg.weight_decay != 0, **kw_a,
            )
        elif G is not None and only in (None, "flash"):
            n = C * d
            LAST_LAUNCH["adam_elem"] = kern("adam_elem")[(triton_cdiv(n, blocks.adam_block), B)](
                G, W_in, ws.W, Wh_out, ws.M, ws.V, n, d,
                wst[0], ws.W.stride(0), Wh_out.stride(0), Wh_out.stride(1), G.stride(0), G.stride(1), 1.0 / k,
                *adam, BLOCK=blocks.adam_block, **flags, **kw_a,
            )
    ws.c = ws.c2[cfg.steps % 2]
    if half is not None:
        ws.W.copy_(half[0]).add_(half[1])  # W = hi + lo, added in fp32


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _predict(ws_W: torch.Tensor, ws_c: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(ws_c.unsqueeze(1), query.unsqueeze(1), ws_W.transpose(1, 2)).squeeze(1)


def fused_head_ttt(
    weight: torch.Tensor,
    bias: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    cfg: HeadTTTConfig,
    return_heads: bool = False,
    *,
    precision: str = "tf32",
    z_dtype: torch.dtype | None = None,
    blocks: FusedBlocks | FlashBlocks | None = None,
    interpret: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batched_head_ttt` through the fused Triton kernels (see the module docstring).

    CUDA tensors run the kernels; CPU tensors run `batched_head_ttt` (exact torch) unless interpret=True.
    """
    _check_precision(precision)
    _check_shapes(weight, bias, feats, labels, query)
    if feats.device.type != "cuda" and not interpret:
        return batched_head_ttt(weight, bias, feats, labels, query, cfg, return_heads=return_heads)
    try:
        import triton  # noqa: F401
    except ImportError:
        warnings.warn("triton is not installed: running the torch engine instead of the fused kernels", stacklevel=2)
        return batched_head_ttt(weight, bias, feats, labels, query, cfg, return_heads=return_heads)
    blocks = blocks or default_blocks(precision, feats.device)
    B, k, d = feats.shape
    C = weight.shape[0]
    if cfg.steps == 0:
        return batched_head_ttt(weight, bias, feats, labels, query, cfg, return_heads=return_heads)
    weight = weight.detach().float().contiguous()
    bias = bias.detach().float().contiguous()
    ws: _FlashWorkspace | _Workspace
    if precision in FLASH_PRECISIONS:
        blocks = _state_for(precision, blocks)
        _check_labels(labels, C)
        weight_max = _check_fp16_range(weight, "weight")
        if not _g_fp16_fits(blocks, k, _check_fp16_range(feats, "feats"), cfg, weight_max):
            warnings.warn(f"k * max|feats| exceeds fp16's range: the gradient buffer and Adam state stay fp32 "
                          f"(precision {precision!r})", stacklevel=2)
            blocks = dataclasses.replace(blocks, g_fp16=False, state="fp32")
        ws = _FlashWorkspace(B, k, C, d, feats.device)
        x = torch.empty(B, k, _round_up(d, 16), dtype=torch.float16, device=feats.device)[..., :d]
        x.copy_(feats.detach())
        _run_flash_steps(weight, weight.half(), bias, x, labels.contiguous(), ws, cfg, blocks, interpret)
        logits = _predict(ws.W, ws.c, query.detach().float())
        W_out, c_out = ws.W, ws.c
        if blocks.design == "split":
            logits, W_out, c_out = _redo_failed_references(ws.ovf, weight, bias, feats, labels, query, cfg,
                                                           interpret, logits, W_out, c_out)
        return (logits, W_out, c_out) if return_heads else logits
    blocks = _fused_blocks(precision, blocks)
    x = feats.detach().to(torch.bfloat16 if precision == "bf16" else torch.float32).contiguous()
    y = labels.contiguous()
    ws = _Workspace(B, k, C, d, z_dtype or _default_z_dtype(precision), triton_cdiv(C, blocks.fwd_bn), feats.device)
    _run_steps(weight, bias, x, y, ws, cfg, precision, blocks, interpret)
    logits = _predict(ws.W, ws.c, query.detach().float())
    return (logits, ws.W, ws.c) if return_heads else logits


def _redo_failed_references(ovf, weight, bias, feats, labels, query, cfg, interpret, logits, W, c):
    """Points of a "split" run whose softmax reference left fp16's range (ovf > 0; not seen in practice: it
    needs a log-sum-exp to move by more than 11 in one step) are recomputed by the flash design."""
    bad = torch.nonzero(ovf).flatten()
    if bad.numel() == 0:
        return logits, W, c
    warnings.warn(f"fused fp16 'split': {bad.numel()} point(s) left fp16's range; recomputed by the flash design",
                  stacklevel=3)
    lg, Wb, cb = fused_head_ttt(weight, bias, feats[bad], labels[bad], query[bad], cfg, True, precision="fp16",
                                blocks=FlashBlocks(), interpret=interpret)
    logits, W, c = logits.clone(), W.clone(), c.clone()
    logits[bad], W[bad], c[bad] = lg, Wb, cb
    return logits, W, c


class FusedHeadTTT:
    """Fused TTT for repeated batches of at most `batch` points: static buffers, optionally one CUDA graph.

        engine = FusedHeadTTT(weight, bias, cfg, batch=64, precision="tf32")
        logits = engine(feats, labels, query)        # feats (b ≤ 64, k, d), labels (b, k), query (b, d)

    The global head is copied in at construction (change it with a new engine). With cuda_graph=True
    (default on CUDA) the first call compiles the kernels and captures the whole TTT (the copy of the
    inputs into the static buffers excluded) as one graph; later calls copy the inputs in and replay.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, cfg: HeadTTTConfig, batch: int,
                 precision: str = "tf32", z_dtype: torch.dtype | None = None, cuda_graph: bool | None = None,
                 blocks: FusedBlocks | FlashBlocks | None = None, check_range: bool = True) -> None:
        _check_precision(precision)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if cfg.steps < 1:
            raise ValueError("FusedHeadTTT needs cfg.steps >= 1 (use batched_head_ttt for 0 steps)")
        if weight.device.type != "cuda":
            raise ValueError("FusedHeadTTT runs on CUDA tensors only; use fused_head_ttt / batched_head_ttt on CPU")
        self.cfg, self.batch, self.precision, self.check_range = cfg, batch, precision, check_range
        blocks = blocks or default_blocks(precision, weight.device)
        self.blocks: FusedBlocks | FlashBlocks  # FlashBlocks exactly when self.flash
        self.ws: _FlashWorkspace | _Workspace  # _FlashWorkspace exactly when self.flash
        self.cuda_graph = True if cuda_graph is None else cuda_graph
        C, d = weight.shape
        dev = weight.device
        self.weight = weight.detach().float().clone().contiguous()
        self.bias = bias.detach().float().clone().contiguous()
        self.flash = precision in FLASH_PRECISIONS
        self.y = torch.zeros(batch, cfg.k, dtype=torch.int64, device=dev)
        self.q = torch.zeros(batch, d, dtype=torch.float32, device=dev)
        if self.flash:
            self.blocks = flash = _state_for(precision, blocks)
            self._weight_max = _check_fp16_range(self.weight, "weight")
            self.weight_h = self.weight.half()
            self.x = torch.zeros(batch, cfg.k, _round_up(d, 16), dtype=torch.float16, device=dev)[..., :d]
            self.ws = flash_ws = _FlashWorkspace(batch, cfg.k, C, d, dev)
            if flash.design == "split":  # made here, before the halves take views of them
                flash_ws.split_buffers(cfg.k, flash.separate_adam, flash.g_fp16)
                if flash.state == "fp16":
                    flash_ws.half_state()
        else:
            self.blocks = fused = _fused_blocks(precision, blocks)
            self.x = torch.zeros(batch, cfg.k, d, dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                                 device=dev)
            self.ws = _Workspace(batch, cfg.k, C, d, z_dtype or _default_z_dtype(precision),
                                 triton_cdiv(C, fused.fwd_bn), dev)
        self.logits = torch.empty(batch, C, dtype=torch.float32, device=dev)
        self._graph: torch.cuda.CUDAGraph | None = None

    def _flash_parts(self) -> tuple[FlashBlocks, _FlashWorkspace]:
        """(blocks, workspace) of an engine of an fp16 mode (self.flash)."""
        assert isinstance(self.blocks, FlashBlocks) and isinstance(self.ws, _FlashWorkspace), "not an fp16 mode"
        return self.blocks, self.ws

    def _fused_parts(self) -> tuple[FusedBlocks, _Workspace]:
        """(blocks, workspace) of an engine of a non-fp16 mode (not self.flash)."""
        assert isinstance(self.blocks, FusedBlocks) and isinstance(self.ws, _Workspace), "an fp16 mode"
        return self.blocks, self.ws

    def _body(self) -> None:
        if not self.flash:
            fused, fused_ws = self._fused_parts()
            _run_steps(self.weight, self.bias, self.x, self.y, fused_ws, self.cfg, self.precision, fused, False)
            self.logits.copy_(_predict(fused_ws.W, fused_ws.c, self.q))
            return
        blocks, ws = self._flash_parts()
        if blocks.streams > 1 and self.batch > 1:
            # the batch in parts on several streams: one part's memory-bound kernels can run beside another
            # part's compute-bound ones. "split": part j starts once part j-1 has done its first gradient, so
            # the parts run out of phase (one part's streaming Adam meets another's dots, not its own copy)
            n = min(blocks.streams, self.batch)
            bounds = [self.batch * j // n for j in range(n + 1)]
            main = torch.cuda.current_stream()
            sides = self._side_streams = getattr(self, "_side_streams", None) or [torch.cuda.Stream()
                                                                                  for _ in range(n - 1)]
            staggered = blocks.design == "split"
            for side in sides:
                side.wait_stream(main)  # the inputs copied in
            ev = None
            for j in range(n):
                stream = main if j == 0 else sides[j - 1]
                if j > 0 and staggered:
                    stream.wait_event(ev)
                ev = torch.cuda.Event() if staggered and j < n - 1 else None
                lo, hi = bounds[j], bounds[j + 1]
                with torch.cuda.stream(stream):
                    _run_flash_steps(self.weight, self.weight_h, self.bias, self.x[lo:hi], self.y[lo:hi],
                                     ws.part(lo, hi), self.cfg, blocks, False, first_grad_event=ev)
            for side in sides:
                main.wait_stream(side)
            ws.c = ws.c2[self.cfg.steps % 2]
        else:
            _run_flash_steps(self.weight, self.weight_h, self.bias, self.x, self.y, ws, self.cfg, blocks, False)
        self.logits.copy_(_predict(ws.W, ws.c, self.q))

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 return_heads: bool = False):
        _check_shapes(self.weight, self.bias, feats, labels, query)
        b = feats.shape[0]
        if b > self.batch or feats.shape[1] != self.cfg.k:
            raise ValueError(f"feats has shape {tuple(feats.shape)}; this engine takes at most "
                             f"({self.batch}, {self.cfg.k}, d)")
        if self.flash and self.check_range:
            blocks, _ = self._flash_parts()
            _check_labels(labels, self.weight.shape[0])
            if not _g_fp16_fits(blocks, self.cfg.k, _check_fp16_range(feats, "feats"), self.cfg,
                                self._weight_max):
                # features too large for the fp16 gradient buffer: this batch takes the fp32 one (no graph)
                warnings.warn(f"k * max|feats| exceeds fp16's range: this batch runs with an fp32 gradient buffer "
                              f"and Adam state, outside the CUDA graph (precision {self.precision!r})", stacklevel=2)
                return fused_head_ttt(self.weight, self.bias, feats, labels, query, self.cfg, return_heads,
                                      precision="fp16",
                                      blocks=dataclasses.replace(blocks, g_fp16=False, state="fp32"))
        self.x[:b].copy_(feats)
        self.y[:b].copy_(labels)
        self.q[:b].copy_(query)
        if not self.cuda_graph:
            self._body()
        elif self._graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body()  # compiles the kernels (outside the capture)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self._graph = graph
            graph.replay()
        else:
            self._graph.replay()
        logits = self.logits[:b].clone()
        W, c = (self.ws.W[:b].clone(), self.ws.c[:b].clone()) if return_heads else (None, None)
        if self.flash:
            blocks, ws = self._flash_parts()
            if blocks.design == "split" and bool(ws.ovf[:b].any()):
                logits, W, c = _redo_failed_references(ws.ovf[:b], self.weight, self.bias, feats, labels, query,
                                                       self.cfg, False, logits,
                                                       ws.W[:b] if W is None else W,
                                                       ws.c[:b] if c is None else c)
        return (logits, W, c) if return_heads else logits


def _engine(precision: str):
    def run(weight, bias, feats, labels, query, cfg, return_heads=False):
        return fused_head_ttt(weight, bias, feats, labels, query, cfg, return_heads, precision=precision)

    run.__name__ = f"fused_head_ttt_{precision}"
    run.__doc__ = f"fused_head_ttt with precision={precision!r} (batched_head_ttt's signature)."
    return run


HEAD_TTT_ENGINES.register("exact")(batched_head_ttt)
for _p in PRECISIONS:
    HEAD_TTT_ENGINES.register(f"fused-{_p}")(_engine(_p))
