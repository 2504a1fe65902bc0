"""Compile every fused kernel for a GPU without one: registers, spills, shared memory, matrix instruction.

Triton compiles for a named target (default sm_90, Hopper) through a stand-in driver; each launch of the designs'
own host code (harness/ttt/fused) becomes a warm-up, so the kernels compile with the arguments, strides and
constexprs of a real run at the ImageNet shape (B 4, k 600, C 1000, d 512, 3 steps) and nothing is launched.
Compile errors, register counts and spills of a kernel edit show here before any GPU time is spent. Triton's
internals (driver, JITFunction.run) are patched: this follows the installed Triton version (3.6-3.8 tried).

    python benchmarks/tuning/compile_check.py [--capability 90] [--precisions fp16-state tf32 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from harness.ttt.fused import PRECISIONS, FlashBlocks, FusedBlocks, default_blocks, three_kernel  # noqa: E402
from harness.ttt.fused.dispatch import fp16_buffers, run_fp16_steps  # noqa: E402
from harness.ttt.fused.fp16_common import Fp16Run  # noqa: E402
from harness.ttt.linear import HeadTTTConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Compiled:
    kernel: str
    registers: int
    stack: int  # bytes of stack per thread (register spills)
    shared: int  # static shared memory in the cubin (Triton's dynamic shared memory is `shared_dynamic`)
    local: int  # bytes of local memory per thread
    shared_dynamic: int
    matrix: str  # wgmma, mma.sync or fma


def compile_all(precisions, capability: int = 90) -> list[tuple[str, Compiled]]:
    """(precision, Compiled) for every kernel launch of `precisions` ("flash": the flash design)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    class StandIn:
        def get_current_target(self):
            return GPUTarget("cuda", capability, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    cuobjdump = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))[0]
    seen: list[Compiled] = []
    real_run = JITFunction.run

    def warm(self, *args, grid, warmup, **kwargs):
        k = real_run(self, *args, grid=grid, warmup=True, **kwargs)
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
        if m is None:
            raise RuntimeError(f"{self.fn.__name__}: no resource usage in {usage[:200]!r}")
        ptx = k.asm["ptx"]
        seen.append(Compiled(self.fn.__name__, *map(int, m.groups()), int(k.metadata.shared),
                             "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"))
        return k

    B, k, C, d = 4, 600, 1000, 512
    cfg = HeadTTTConfig(lr=0.02, steps=3, k=k)
    g = torch.Generator().manual_seed(0)
    W, c = torch.randn(C, d, generator=g) * 0.1, torch.zeros(C)
    X, y = torch.randn(B, k, d, generator=g), torch.randint(0, C, (B, k), generator=g)
    out: list[tuple[str, Compiled]] = []
    previous = driver._active  # None until a driver was first asked for (reset_active would then need a GPU)
    driver.set_active(StandIn())
    JITFunction.run = warm
    try:
        for prec in precisions:
            n = len(seen)
            if prec in ("ieee", "tf32x3", "tf32", "bf16"):
                bl = default_blocks(prec)
                assert isinstance(bl, FusedBlocks)
                ws = three_kernel.allocate(B, k, C, d, prec, bl, "cpu")
                x = X.to(three_kernel.operand_dtype(prec)).contiguous()
                three_kernel.run_steps(W, c, x, y, ws, cfg, prec, bl, False)
            else:
                fb = FlashBlocks() if prec == "flash" else default_blocks(prec)
                assert isinstance(fb, FlashBlocks)
                fb = fb if prec == "flash" else dataclasses.replace(fb, f_tma=capability >= 90)
                xh = torch.zeros(B, k, d, dtype=torch.float16)
                xh.copy_(X)
                run = Fp16Run(W, W.half(), c, xh, y, fp16_buffers(B, k, C, d, fb, "cpu"), cfg, fb, False)
                run_fp16_steps(run)
            out += [(prec, s) for s in dict.fromkeys(seen[n:])]  # distinct compilations, in launch order
    finally:
        JITFunction.run = real_run
        driver._active = previous
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capability", type=int, default=90, help="CUDA capability as major*10 + minor (90: Hopper)")
    ap.add_argument("--precisions", nargs="+", default=[*PRECISIONS, "flash"])
    args = ap.parse_args()
    print(f"{'precision':<11}{'kernel':<22}{'regs':>5}{'stack':>6}{'local':>6}{'smem':>7}  matrix", flush=True)
    for prec, s in compile_all(args.precisions, args.capability):
        print(f"{prec:<11}{s.kernel:<22}{s.registers:>5}{s.stack:>6}{s.local:>6}{s.shared_dynamic:>7}  {s.matrix}",
              flush=True)


if __name__ == "__main__":
    main()
