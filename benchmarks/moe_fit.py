"""Benchmark: fitting E MoE experts (S6, Table 6) batched vs one expert at a time, on ImageNet-shaped
synthetic embeddings (N = 1.23M, d = 512, C = 1000, E = 1e4: lr 6e-4, 20 full-batch Adam steps, k = 30).

What is timed: only the expert fitting, given centroids and each centroid's k neighbour indices.
  batched  harness.ttt.moe.iter_expert_chunks (batched_head_ttt with B = experts, `--chunk` at a time)
           over all E experts; each chunk's heads are dropped after it is fitted (bounded memory).
  loop     harness.ttt.linear.head_ttt_one_point (nn.Linear + autograd + torch.optim.Adam), one expert
           after another, timed on the first `--loop-experts` experts and extrapolated linearly to E.
Not timed (set-up, stated in the output): the synthetic data, the centroids (a random subset of training
points stands in for k-means: faiss is not installed on the GPU machine, and k-means cost is not expert
fitting), and the centroids' neighbours (exact GEMM + top-k in torch). Both paths fit the same experts;
their heads are compared. Torch only: runs on the GPU machine without faiss / ray / polars.

Run (from the repository root):
    python benchmarks/moe_fit.py                         # one GPU, full ImageNet shape
    python benchmarks/moe_fit.py --device cpu            # small CPU mode (N 20k, d 64, C 100, E 300)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.timing import sync  # noqa: E402
from harness.ttt.linear import head_ttt_one_point  # noqa: E402
from harness.ttt.moe import iter_expert_chunks, moe_spec  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    n: int = 1_230_000
    d: int = 512
    classes: int = 1000
    experts: int = 10_000
    chunk: int = 2048
    loop_experts: int = 20


CPU_SHAPE = Shape(n=20_000, d=64, classes=100, experts=300, chunk=128, loop_experts=10)


def nearest_training_points(x: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(E, k) indices of each query's k nearest rows of x by L2 (exact GEMM + top-k)."""
    sq = (x * x).sum(1)  # (N,)
    out = []
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk]
        out.append(torch.topk(sq - 2 * q @ x.T, k, dim=1, largest=False).indices)  # ||q||² is constant per row
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    for f in dataclasses.fields(Shape):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=int)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    base = CPU_SHAPE if device.type == "cpu" else Shape()
    shape = dataclasses.replace(base, **{f.name: getattr(a, f.name) for f in dataclasses.fields(Shape)
                                         if getattr(a, f.name) is not None})
    cfg = moe_spec(10_000).ttt_config()  # Table 6 for 1e4 experts: lr 6e-4, 20 steps, k 30
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"shape: N={shape.n:,} d={shape.d} C={shape.classes} E={shape.experts:,}; Table 6 (1e4 experts): "
          f"lr {cfg.lr}, {cfg.steps} full-batch Adam steps, k {cfg.k}; chunk {shape.chunk} experts")

    g = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    x = torch.randn(shape.n, shape.d, device=device, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)  # (N, d) like CLIP embeddings
    y = torch.randint(0, shape.classes, (shape.n,), device=device, generator=g)  # (N,)
    W = torch.randn(shape.classes, shape.d, device=device, generator=g) * 0.05  # (C, d) global head
    c = torch.zeros(shape.classes, device=device)
    centroids = x[torch.randperm(shape.n, device=device, generator=g)[: shape.experts]]  # k-means stand-in
    nb = nearest_training_points(x, centroids, cfg.k)  # (E, k)
    sync(device)
    print("set-up (data, stand-in centroids, neighbours by GEMM + top-k; not timed below): "
          f"{time.perf_counter() - t0:.1f} s")

    # warm-up both paths (CUDA context, kernels, allocator)
    next(iter_expert_chunks(W, c, x, y, centroids[:8], nb[:8], cfg, chunk=8))
    head_ttt_one_point(W, c, x[nb[0]], y[nb[0]], centroids[0], cfg)
    sync(device)

    keep = {}
    t0 = time.perf_counter()
    for start, Wb, cb in iter_expert_chunks(W, c, x, y, centroids, nb, cfg, chunk=shape.chunk):
        if start == 0:
            keep["W"], keep["c"] = Wb[: shape.loop_experts].clone(), cb[: shape.loop_experts].clone()
    sync(device)
    batched_s = time.perf_counter() - t0

    L = min(shape.loop_experts, shape.experts)
    diffs = []
    t0 = time.perf_counter()
    for e in range(L):
        _, We, ce = head_ttt_one_point(W, c, x[nb[e]], y[nb[e]], centroids[e], cfg)
        diffs.append(max((We - keep["W"][e]).abs().max().item(), (ce - keep["c"][e]).abs().max().item()))
    sync(device)
    loop_each = (time.perf_counter() - t0) / L
    loop_s = loop_each * shape.experts
    print(f"batched: {batched_s:.2f} s for {shape.experts:,} experts ({shape.experts / batched_s:,.0f} experts/s)")
    print(f"loop:    {loop_each * 1e3:.1f} ms per expert, timed on {L} experts, extrapolated x{shape.experts:,} "
          f"= {loop_s:.1f} s")
    print(f"ratio:   {loop_s / batched_s:.1f}x (loop / batched); "
          f"max |head difference| batched vs loop: {max(diffs):.2e}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
