"""Tuning of the three-kernel design (harness/ttt/fused/three_kernel.py: precisions ieee, tf32x3, tf32, bf16).

For each precision and tile/layout configuration: µs of one forward, one D and one GEMM + Adam launch for B
points at the ImageNet shape, µs per point and step, the points/s they imply for 50 steps, achieved bytes/s
against the counted bytes, and the compiled kernels' registers, spills, shared memory and matrix instruction
(wgmma = Hopper tensor-core path, mma.sync = the older path, fma = none). --best-json writes the fastest parts
combined, for benchmarks/ttt_linear.py --blocks-json.

    python benchmarks/tuning/three_kernel_tiles.py --b 32 [--best-json best.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from harness.ttt.fused import FusedBlocks  # noqa: E402
from harness.ttt.fused.three_kernel import (  # noqa: E402
    allocate,
    launch_dgrad,
    launch_forward,
    launch_gemm_adam,
    x_for_gemm,
)
from harness.ttt.linear import HeadTTTConfig  # noqa: E402

CONFIGS = {
    "default": FusedBlocks(),
    "no x_t": FusedBlocks(x_t=False),
    "g64x128": FusedBlocks(grad_bc=64),
    "g bk64 st2": FusedBlocks(grad_bk=64, grad_stages=2),
    "f128x128 w8": FusedBlocks(fwd_bm=128, fwd_warps=8),
    "f bk64": FusedBlocks(fwd_bk=64),
    "d32x128": FusedBlocks(d_bc=32, d_bk=128),
}


def info(h) -> str:
    try:
        ptx = h.asm.get("ptx", "") if hasattr(h.asm, "get") else h.asm["ptx"]
        mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "fma")
        return f"regs {h.n_regs} spills {h.n_spills} smem {h.metadata.shared // 1024}K {mma}"
    except Exception as e:  # noqa: BLE001
        return f"(no info: {e})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--b", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--precisions", nargs="+", default=["tf32", "bf16"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--best-json", default=None,
                    help="write per precision the fastest fwd, D and gemm settings, combined (for ttt_linear.py)")
    args = ap.parse_args()
    B, k, C, d = args.b, 600, 1000, 512
    dev = torch.device("cuda")
    cfg = HeadTTTConfig(lr=0.02, steps=50, k=k)
    g = torch.Generator(device=dev).manual_seed(0)
    W0 = torch.randn(C, d, device=dev, generator=g) * 0.1
    c0 = torch.randn(C, device=dev, generator=g) * 0.1
    x32 = torch.nn.functional.normalize(torch.randn(B, k, d, device=dev, generator=g), dim=-1)
    y = torch.randint(0, C, (B, k), device=dev, generator=g)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    print(f"{torch.cuda.get_device_name()}  B={B} k={k} C={C} d={d}", flush=True)
    print(f"{'prec':<5} {'config':<12} {'fwd us':>7} {'D us':>6} {'gemm us':>7} {'us/pt-step':>10} {'->pts/s':>8}"
          f"  fwd | D | gemm+adam", flush=True)
    best: dict[str, dict] = {}
    for prec in args.precisions:
        parts: dict[str, tuple[float, FusedBlocks | None]] = {"fwd": (float("inf"), None), "d": (float("inf"), None),
                                                              "grad": (float("inf"), None)}
        x = x32.to(torch.bfloat16) if prec == "bf16" else x32
        zb = 2 if prec == "bf16" else 4
        for name in args.configs:
            bl = CONFIGS[name]
            try:
                ws = allocate(B, k, C, d, prec, bl, dev)
                xg = x_for_gemm(x, bl)
                wst0, cst0 = (0, d, 1), (0, 1)
                launch_forward(x, W0, wst0, c0, cst0, ws, prec, bl, False)
                launch_dgrad(y, ws, bl, False)
                launch_gemm_adam(xg, W0, wst0, c0, cst0, ws, cfg, 1, prec, bl, False)
                wst, cst = ws.W.stride(), ws.c.stride()
                hs = [launch_forward(x, ws.W, wst, ws.c, cst, ws, prec, bl, False),
                      launch_dgrad(y, ws, bl, False),
                      launch_gemm_adam(xg, ws.W, wst, ws.c, cst, ws, cfg, 2, prec, bl, False)]
                torch.cuda.synchronize()
                times = []
                for which in range(3):
                    ev[0].record()
                    for r in range(args.reps):
                        if which == 0:
                            launch_forward(x, ws.W, wst, ws.c, cst, ws, prec, bl, False)
                        elif which == 1:
                            launch_dgrad(y, ws, bl, False)
                        else:
                            launch_gemm_adam(xg, ws.W, wst, ws.c, cst, ws, cfg, 3 + r, prec, bl, False)
                    ev[1].record()
                    torch.cuda.synchronize()
                    times.append(ev[0].elapsed_time(ev[1]) * 1e3 / args.reps)
                per = sum(times) / B
                byts = [(C * d * 4 + k * d * zb + k * C * zb) * B, 2 * k * C * zb * B,
                        (6 * C * d * 4 + k * d * zb + k * C * zb) * B]
                bw = " | ".join(f"{bb / tt / 1e6:.1f}TB/s {info(h)}" for bb, tt, h in zip(byts, times, hs, strict=True))
                print(f"{prec:<5} {name:<12} {times[0]:7.0f} {times[1]:6.0f} {times[2]:7.0f} {per:10.2f} "
                      f"{1e6 / (50 * per):8.0f}  {bw}", flush=True)
                assert torch.isfinite(ws.W).all()
                for key, tt in zip(parts, times, strict=True):
                    if tt < parts[key][0]:
                        parts[key] = (tt, bl)
                del ws
            except Exception as e:  # noqa: BLE001
                print(f"{prec:<5} {name:<12} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                traceback.print_exc()
            torch.cuda.empty_cache()
        fastest = {key: bl for key, (_, bl) in parts.items() if bl is not None}
        if len(fastest) == len(parts):
            combo = {}
            for key, bl in fastest.items():
                combo.update({f: v for f, v in vars(bl).items() if f.startswith(key + "_")})
            combo["x_t"] = fastest["grad"].x_t
            best[prec] = combo
            print(f"{prec}: fastest parts combined: {combo} (predicted "
                  f"{1e6 / (50 * sum(v[0] for v in parts.values()) / B):.0f} points/s)", flush=True)
    if args.best_json:
        import json

        with open(args.best_json, "w") as fh:
            json.dump(best, fh)


if __name__ == "__main__":
    main()
