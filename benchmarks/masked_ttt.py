"""Masked TTT speed at S8's shape: the batched engine vs its one-point autograd loop, in the same run.

Workload (paper §3 O2): d1 = 4096 concepts, C = 1000 classes, k = 50 neighbours, 80 full-batch Adam steps at
lr 0.02, λ = 0.2, τ = 0.1. Synthetic data of the real shapes: neighbour and query concept vectors with 16 of
4096 concepts active (positive values, like the SAE's top-16), random labels, a random global head. Prints
test points/s of
  loop     `masked_ttt_one_point` (nn.Linear + a θ parameter, autograd, torch.optim.Adam), one point at a time
  batched  `batched_masked_ttt` (B heads and masks stacked, hand-written gradients), in chunks of --chunk
the ratio, and agreement on the loop's points: equal argmax, equal masks, max |Δlogit|. fp32 throughout
(--tf32 allows TF32 matmuls in both). Runs with torch only (no ray, faiss, polars, optuna).

    python benchmarks/masked_ttt.py --device cuda                     # the RESULTS.md row: one H200, ~1 minute
    python benchmarks/masked_ttt.py --device cpu --d1 256 --classes 50 --points 32 --loop-points 4   # seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.timing import sync
from harness.ttt.masked import MaskedTTTConfig, batched_masked_ttt, masked_ttt_one_point


def sparse_concepts(n: int, d1: int, active: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, d1) rows with `active` random concepts set to positive values, the rest 0."""
    out = torch.zeros(n, d1, device=device)
    which = torch.rand(n, d1, generator=g, device=device).argsort(1)[:, :active]  # (n, active)
    return out.scatter_(1, which, torch.rand(n, active, generator=g, device=device) + 0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--d1", type=int, default=4096)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--active", type=int, default=16)
    p.add_argument("--points", type=int, default=1024, help="test points of the batched engine")
    p.add_argument("--chunk", type=int, default=128, help="test points per batched call")
    p.add_argument("--loop-points", type=int, default=16, help="test points of the one-point loop")
    p.add_argument("--tf32", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    g = torch.Generator(device=device).manual_seed(0)
    T, k, d1, C = args.points, args.k, args.d1, args.classes
    feats = sparse_concepts(T * k, d1, args.active, g, device).reshape(T, k, d1)  # (T, k, d1)
    query = sparse_concepts(T, d1, args.active, g, device)  # (T, d1)
    labels = torch.randint(0, C, (T, k), generator=g, device=device)  # (T, k)
    weight = torch.randn(C, d1, generator=g, device=device) * 0.05
    bias = torch.randn(C, generator=g, device=device) * 0.01
    cfg = MaskedTTTConfig(lr=0.02, steps=args.steps, k=k, penalty=0.2, temperature=0.1)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch "
          f"{torch.__version__}, tf32 {args.tf32}; d1 {d1}, C {C}, k {k}, {args.steps} steps", flush=True)

    batched_masked_ttt(weight, bias, feats[:2], labels[:2], query[:2], cfg)  # warm-up
    masked_ttt_one_point(weight, bias, feats[0], labels[0], query[0], cfg)
    sync(device)
    t = time.perf_counter()
    outs = [batched_masked_ttt(weight, bias, feats[s : s + args.chunk], labels[s : s + args.chunk],
                               query[s : s + args.chunk], cfg) for s in range(0, T, args.chunk)]
    sync(device)
    batched_s = time.perf_counter() - t
    logits = torch.cat([o[0] for o in outs])
    masks = torch.cat([o[1] for o in outs])

    L = min(args.loop_points, T)
    t = time.perf_counter()
    loop = [masked_ttt_one_point(weight, bias, feats[i], labels[i], query[i], cfg) for i in range(L)]
    sync(device)
    loop_s = time.perf_counter() - t
    ref_logits = torch.stack([r[0] for r in loop])
    ref_masks = torch.stack([r[1] for r in loop])

    batched_rate, loop_rate = T / batched_s, L / loop_s
    print(f"loop     {L:5d} points in {loop_s:7.2f} s = {loop_rate:8.1f} points/s")
    print(f"batched  {T:5d} points in {batched_s:7.2f} s = {batched_rate:8.1f} points/s (chunks of {args.chunk}): "
          f"{batched_rate / loop_rate:.1f}x the loop")
    same_argmax = (logits[:L].argmax(1) == ref_logits.argmax(1)).float().mean()
    same_mask = (masks[:L] == ref_masks).all(1).float().mean()
    print(f"agreement on the loop's {L} points: argmax {same_argmax:.3f}, masks equal {same_mask:.3f}, max |Δlogit| "
          f"{(logits[:L] - ref_logits).abs().max():.2e}; mean ‖m‖₀ {masks.sum(1).float().mean():.1f} of {d1}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
