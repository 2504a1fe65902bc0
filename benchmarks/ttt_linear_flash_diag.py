"""Per-kernel timings of the fp16 designs (harness/ttt/linear_fused.py: "flash", "split") on the ImageNet shape.

No loop, no references: random neighbours, one FusedHeadTTT engine per FlashBlocks variant, and for each
the µs per point and step of the lse / forward kernel, of the gradient kernel alone and with Adam, with
registers and spills; variants after the first also print their agreement with the first one's logits.
A variant with "state": "fp16" runs precision "fp16-state". Variants with `diag` set skip part of the work
(timing only; their outputs are not TTT results).

    python benchmarks/ttt_linear_flash_diag.py [--b 256] [--variants '{}' '{"design": "split", "bc": 128}']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.ttt_linear import flash_breakdown
from harness.ttt.linear import HeadTTTConfig
from harness.ttt.linear_fused import FlashBlocks, FusedHeadTTT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["{}"], help="FlashBlocks fields as JSON, one per variant")
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
    print(f"device {torch.cuda.get_device_name(dev)}; B={args.b}", flush=True)
    ref = None  # logits of the first variant without diag: the others are compared with it
    for v in args.variants:
        bl = FlashBlocks(**json.loads(v))
        prec = "fp16-state" if bl.state == "fp16" else "fp16"
        try:
            feats, labels = train_x[idx], train_y[idx]
            msg = ""
            if not bl.diag:  # end to end through the CUDA graph (streams included)
                eng = FusedHeadTTT(W0, c0, cfg, batch=args.b, precision=prec, blocks=bl)
                out = eng(feats, labels, q)
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
                msg = f"{pps:,.0f} points/s end to end; " + msg
                del eng
            eng = FusedHeadTTT(W0, c0, cfg, batch=args.b, precision=prec, blocks=bl, cuda_graph=False)
            eng(feats, labels, q)
            print(f"{v}: {msg}{flash_breakdown(eng, dev)}", flush=True)
            del eng
        except Exception as e:
            print(f"{v}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            traceback.print_exc()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
