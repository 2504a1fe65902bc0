"""Precision modes and the tile sizes / launch shapes of each design (the fastest measured are the defaults;
how they were measured: benchmarks/tuning/, benchmarks/RESULTS.md)."""

from __future__ import annotations

import dataclasses

import torch

PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16", "fp16", "fp16-state")
FP16_PRECISIONS = ("fp16", "fp16-state")  # fp16 dot operands: the split design (flash for overflowing points)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@dataclasses.dataclass(frozen=True)
class FusedBlocks:
    """Tile sizes and launch shapes of the three-kernel design (precisions ieee, tf32x3, tf32, bf16)."""

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
    """Tile sizes and launch shapes of the fp16 designs, "split" (the fp16 modes' default, `default_blocks`) and
    "flash" (the field defaults: the fallback for points whose split reference overflowed)."""

    design: str = "flash"  # "flash" or "split" (harness/ttt/fused/flash.py, split.py)
    lse_bm: int = 64  # lse kernel (flash: every step; split: the first reference): neighbour rows per program
    lse_bn: int = 256  # classes per inner tile
    lse_bk: int = 32
    lse_warps: int = 4
    lse_stages: int = 3
    bc: int = 64  # gradient kernel: classes per program (flash: it owns all d of each)
    bd: int = 128  # split: d columns per gradient program
    bkk: int = 64  # neighbour rows per inner step
    warps: int = 8
    stages: int = 2
    adam_block: int = 2048  # elements per program of the streaming Adam kernel
    adam_warps: int = 8
    streams: int = 2  # FusedHeadTTT: the batch in this many parts on as many streams (the kernels of one part
    # overlap those of another)
    f_bm: int = 64  # split: forward tiles
    f_bn: int = 128
    f_bk: int = 64
    f_warps: int = 4
    f_stages: int = 4
    f_tma: bool = False  # split: store E's and XB's tiles through tensor-memory-access descriptors (Hopper)
    g_fp16: bool = False  # split: k·∇W stored in fp16 between the GEMM and Adam (needs k·max|feats| < 60,000,
    # checked; else the dispatch falls back to fp32 with a warning)
    state: str = "fp32"  # split + g_fp16: "fp16" keeps Adam's k·m, k·√v in fp16 and W as hi + lo (two fp16)

    def __post_init__(self) -> None:
        if self.design not in ("flash", "split"):
            raise ValueError(f"FlashBlocks.design must be 'flash' or 'split', got {self.design!r}")
        if self.design == "split" and (self.bc not in (16, 32, 64, 128) or self.bd not in (16, 32, 64, 128)):
            raise ValueError(f"FlashBlocks: design 'split' needs bc and bd in 16, 32, 64, 128; "
                             f"got {self.bc}, {self.bd}")
        if self.state not in ("fp32", "fp16"):
            raise ValueError(f"FlashBlocks.state must be 'fp32' or 'fp16', got {self.state!r}")
        if self.state == "fp16" and not (self.design == "split" and self.g_fp16):
            raise ValueError("FlashBlocks: state 'fp16' needs design 'split' and g_fp16")


def default_blocks(precision: str, device: torch.device | str | None = None) -> FusedBlocks | FlashBlocks:
    """The fastest tiles measured per precision (fp16 modes: H100, B = 256; others: H200, B = 32). The fp16 modes
    store through TMA descriptors on Hopper and newer GPUs (device capability >= 9) only."""
    check_precision(precision)
    if precision in FP16_PRECISIONS:
        dev = torch.device(device) if device is not None else None
        tma = dev is not None and dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9
        return FlashBlocks(design="split", bc=128, bd=128, bkk=64, warps=8, stages=3, f_tma=tma, g_fp16=True,
                           state="fp16" if precision == "fp16-state" else "fp32")
    if precision == "bf16":
        return FusedBlocks(d_bc=32, d_bk=128, x_t=False)
    return FusedBlocks()


def fp16_blocks_for(precision: str, blocks: FusedBlocks | FlashBlocks) -> FlashBlocks:
    """The blocks of an fp16 mode: FlashBlocks, with the state the mode names ("fp16-state": "fp16"; "fp16":
    "fp32")."""
    if not isinstance(blocks, FlashBlocks):
        raise ValueError(f"precision {precision!r} runs with FlashBlocks, got {type(blocks).__name__}")
    want = "fp16" if precision == "fp16-state" else "fp32"
    return blocks if blocks.state == want else dataclasses.replace(blocks, state=want)


def three_kernel_blocks_for(precision: str, blocks: FusedBlocks | FlashBlocks) -> FusedBlocks:
    """The blocks of a non-fp16 mode: FusedBlocks."""
    if not isinstance(blocks, FusedBlocks):
        raise ValueError(f"precision {precision!r} runs with FusedBlocks, got {type(blocks).__name__}")
    return blocks
