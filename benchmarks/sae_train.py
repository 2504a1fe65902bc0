"""Top-k SAE training speed at S8's shape: one epoch on 1.28M x 512 embeddings (paper §E.3).

Workload: the paper's SAE (512 -> 4096 concepts, k ramped from 128 towards 16, dropout 0.5, ghost-gradient
loss, gradient clip 1, Adam, batch 4096) trained by `harness.models.sae_training.train_topk_sae` for one epoch
(313 steps) on synthetic embeddings of the real shape: linear-representation data (each row 16 of 8192 random
unit concept directions with positive weights, L2-normalised), drawn on the device. Prints the epoch's wall
time, samples/s, steps/s, and the SAE's FVU, dead fraction and active concepts on 65,536 rows after it.
Runs with torch only (no ray, faiss, polars, optuna).

    python benchmarks/sae_train.py --device cuda              # the RESULTS.md row: one H200, about 1 minute
    python benchmarks/sae_train.py --device cuda --epochs 3   # more epochs (the paper trains 100)
    python benchmarks/sae_train.py --device cpu --rows 20000 --dim 64 --batch 512   # small, seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.models.sae import TopKSAEConfig
from harness.models.sae_training import SAETrainConfig, TopKTraining, encode, sae_report, train_topk_sae


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_embeddings(rows: int, dim: int, concepts: int, active: int, device: torch.device,
                         seed: int = 0) -> torch.Tensor:
    """(rows, dim) unit-norm rows Ψ = Σ_j w_j p_j over `active` of `concepts` random unit directions p_j."""
    g = torch.Generator(device=device).manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(concepts, dim, generator=g, device=device), dim=1)
    out = torch.empty(rows, dim, device=device)
    for s in range(0, rows, 1 << 16):  # (65536, active, dim) floats at a time: 2 GiB at the default shape
        n = min(1 << 16, rows - s)
        which = torch.randint(0, concepts, (n, active), generator=g, device=device)  # (n, s)
        weights = torch.rand(n, active, generator=g, device=device) + 0.5  # (n, s)
        out[s : s + n] = torch.nn.functional.normalize((weights.unsqueeze(-1) * directions[which]).sum(1), dim=1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=1_281_167)  # ImageNet-1k's training images
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--width", type=int, default=None, help="concepts (default 8 x dim)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--k-start", type=int, default=128)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (default: full fp32)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    width = args.width or 8 * args.dim
    model_cfg = TopKSAEConfig(input_dim=args.dim, width=width, k=args.k)
    topk = TopKTraining(k_start=min(args.k_start, width))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch "
          f"{torch.__version__}, tf32 {args.tf32}", flush=True)
    t = time.perf_counter()
    x = synthetic_embeddings(args.rows, args.dim, 2 * width, args.k, device)
    sync(device)
    print(f"data: {args.rows} x {args.dim} synthetic embeddings in {time.perf_counter() - t:.1f} s", flush=True)
    warm = SAETrainConfig(batch_size=args.batch, epochs=1, warmup_steps=10, schedule_steps=1000)
    train_topk_sae(x[: 5 * args.batch], model_cfg, warm, topk)  # CUDA context, cuBLAS plans, allocator
    sync(device)
    cfg = SAETrainConfig(batch_size=args.batch, epochs=args.epochs)  # the paper's optimisation (§E.3)
    t = time.perf_counter()
    model, run = train_topk_sae(x, model_cfg, cfg, topk)
    sync(device)
    seconds = time.perf_counter() - t
    samples = args.rows * args.epochs
    print(f"SAE {args.dim} -> {width}, k {topk.k_start} -> {args.k}, batch {args.batch}: {run.steps} steps "
          f"({args.epochs} epoch(s)) in {seconds:.2f} s = {samples / seconds:,.0f} samples/s, "
          f"{run.steps / seconds:.1f} steps/s; final loss {run.final_loss:.3e}")
    rows = min(65_536, args.rows)
    phi, recon = encode(model, x[:rows], batch_size=8192)
    r = sae_report(x[:rows].cpu().numpy(), phi, recon)
    print(f"after: FVU {r.fvu:.3f}, dead concepts {100 * r.dead_fraction:.1f}%, mean active {r.active_concepts:.1f} "
          f"(on {rows:,} training rows, at the final k; one epoch is 3% of the k ramp)")


if __name__ == "__main__":
    main()
