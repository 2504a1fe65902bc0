"""Host-side helpers the designs share to launch their kernels by keyword: named strides, grid sizes, padding,
torch.optim.Adam's per-step constants."""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.ttt.linear import HeadTTTConfig


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉: programs along one grid axis."""
    return -(-a // b)


def round_up(n: int, m: int) -> int:
    """n rounded up to a multiple of m (row strides padded to 16 elements let Triton prove alignment)."""
    return cdiv(n, m) * m


def next_pow2(n: int) -> int:
    """The smallest power of two >= n, at least 2 (a `tl.arange` length)."""
    return 1 << max(1, (n - 1).bit_length())


def strides(prefix: str, values: Sequence[int], axes: str) -> dict[str, int]:
    """Kernel keyword arguments of a tensor's strides: strides("sx", x.stride(), "bkd") -> {sxb, sxk, sxd}."""
    if len(values) != len(axes):
        raise ValueError(f"{prefix}: {len(values)} strides for axes {axes!r}")
    return {prefix + a: int(s) for a, s in zip(axes, values, strict=True)}


def adam_constants(cfg: HeadTTTConfig, t: int) -> dict[str, float]:
    """torch.optim.Adam's constants of step t >= 1 as the kernels take them: -lr/(1-β1^t), √(1-β2^t), 1-β1, β2,
    1-β2 (rounded from double as torch does), eps, weight decay."""
    b1, b2 = cfg.betas
    return {"neg_step": -(cfg.lr / (1 - b1 ** t)), "bc2_sqrt": math.sqrt(1 - b2 ** t), "omb1": 1 - b1, "beta2": b2,
            "omb2": 1 - b2, "eps": cfg.eps, "wd": cfg.weight_decay}


def launch_options(interpret: bool, **options: int) -> dict[str, int]:
    """num_warps / num_stages / ... for a compiled launch; none under the interpreter (which takes none)."""
    return {} if interpret else options
