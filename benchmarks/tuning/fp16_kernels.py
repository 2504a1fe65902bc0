"""Tuning of the fp16 designs (harness/ttt/fused/split.py, flash.py) on the ImageNet shape, one GPU.

No loop, no references: random neighbours, one FusedHeadTTT engine per FlashBlocks variant (fields as JSON), and
for each the points/s end to end (CUDA graph, streams included), then the µs per point and step of each kernel
kind run alone over all steps (forward or lse, gradient, Adam; outputs then are not TTT results), with the
compiled kernel's registers and spills. Variants after the first print their agreement with the first one's
logits. A variant with "state": "fp16" runs precision "fp16-state".

    python benchmarks/tuning/fp16_kernels.py [--b 256] \\
        [--variants '{"design": "split", "bc": 128, "bd": 128, "stages": 3, "g_fp16": true, "state": "fp16"}' '{}']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from harness.ttt.fused import FlashBlocks, FusedHeadTTT, default_blocks, flash, split  # noqa: E402  # noqa: E402
from harness.ttt.fused.buffers import SplitBuffers  # noqa: E402
from harness.ttt.fused.fp16_common import Fp16Run, launch_adam_fp32_state, launch_lse  # noqa: E402
from harness.ttt.linear import HeadTTTConfig  # noqa: E402


def kernel_launches(run: Fp16Run) -> dict:
    """Kernel kind -> launch(t) for the run's design (each returns Triton's handle of its main kernel)."""
    if isinstance(run.ws, SplitBuffers):
        e_arg, xb_arg = split.prepare(run)
        return {"forward": lambda t: split.launch_forward(run, t, e_arg, xb_arg),
                "grad": lambda t: split.launch_grad(run, t), "adam": lambda t: split.launch_adam(run, t)}
    return {"lse": lambda t: launch_lse(run, t), "grad": lambda t: flash.launch_grad(run, t),
            "adam": lambda t: launch_adam_fp32_state(run, t, g_mul=1.0)}


def breakdown(run: Fp16Run, reps: int = 3) -> str:
    """µs per point and step of each kernel kind launched alone at every step, registers and spills."""
    out = []
    steps, B = run.cfg.steps, run.x.shape[0]
    for kind, launch in kernel_launches(run).items():
        handle = None
        for _ in range(reps + 1):  # the first pass compiles
            if _ == 1:
                torch.cuda.synchronize()
                start = time.perf_counter()
            for t in range(1, steps + 1):
                handle = launch(t)
        torch.cuda.synchronize()
        us = (time.perf_counter() - start) / reps / steps / B * 1e6
        out.append(f"{kind} {us:.2f} us/point-step ({getattr(handle, 'n_regs', '?')} regs, "
                   f"{getattr(handle, 'n_spills', '?')} spills)")
    return "; ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=256)
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=None,
                    help="FlashBlocks fields as JSON, one per variant (default: fp16-state's and fp16's defaults)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    d, C, k = 512, 1000, 600
    g = torch.Generator(device=dev).manual_seed(0)
    train_x = torch.nn.functional.normalize(torch.randn(args.n_train, d, generator=g, device=dev), dim=1)
    train_y = torch.randint(0, C, (args.n_train,), generator=g, device=dev)
    W0 = torch.randn(C, d, generator=g, device=dev) * 0.1
    c0 = torch.randn(C, generator=g, device=dev) * 0.1
    idx = torch.randint(0, args.n_train, (args.b, k), generator=g, device=dev)
    q = torch.nn.functional.normalize(torch.randn(args.b, d, generator=g, device=dev), dim=1)
    cfg = HeadTTTConfig(lr=0.02, steps=50, k=k)
    variants = [FlashBlocks(**json.loads(v)) for v in args.variants] if args.variants else [
        b for b in (default_blocks("fp16-state", dev), default_blocks("fp16", dev)) if isinstance(b, FlashBlocks)]
    print(f"device {torch.cuda.get_device_name(dev)}; B={args.b}", flush=True)
    ref = None  # the first variant's logits: the others are compared with it
    feats, labels = train_x[idx], train_y[idx]
    for bl in variants:
        prec = "fp16-state" if bl.state == "fp16" else "fp16"
        diff = {f: v for f, v in vars(bl).items() if v != getattr(FlashBlocks(), f)}
        try:
            eng = FusedHeadTTT(W0, c0, cfg, batch=args.b, precision=prec, blocks=bl)
            out = eng(feats, labels, q)
            msg = ""
            if ref is None:
                ref = out
            else:
                msg = (f"vs first: argmax agree {float((out.argmax(1) == ref.argmax(1)).float().mean()):.4f}, "
                       f"max |dlogit| {float((out - ref).abs().max()):.1e}; ")
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.reps):
                eng(feats, labels, q)
            torch.cuda.synchronize()
            pps = args.reps * args.b / (time.perf_counter() - t)
            assert eng.fp16 is not None
            print(f"{prec} {diff}: {pps:,.0f} points/s end to end; {msg}{breakdown(eng.fp16)}", flush=True)
            del eng
        except Exception as e:
            print(f"{prec} {diff}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            traceback.print_exc()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
