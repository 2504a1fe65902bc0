"""Batched head TTT on a CPU by chunk size: why HeadTTTEvaluator sizes CPU chunks to ~8 MB of neighbour features.

    python benchmarks/cpu_chunk.py      # S1's LeNet-11770 shape (k 100, d 512) and LeNet-4430's (k 200, d 240)

Every Adam step reads a chunk's neighbour features (chunk, k, d) twice; 256 points of them (52 MB at k 100,
d 512) leave the cache, a few dozen stay in it. One torch thread, as a Ray trial with one CPU has; the same
1000 points in every run, so the times compare the chunkings of identical work.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

from harness.ttt.evaluator import ttt_chunk_for
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt


def main() -> None:
    torch.set_num_threads(1)
    for k, d in ((100, 512), (200, 240)):
        torch.manual_seed(0)
        n, classes = 1000, 10
        cfg = HeadTTTConfig(lr=5e-3, steps=200, k=k)
        x, y = torch.relu(torch.randn(n, k, d)), torch.randint(0, classes, (n, k))
        q, w, c = torch.randn(n, d), 0.05 * torch.randn(classes, d), torch.zeros(classes)
        chosen = ttt_chunk_for(torch.device("cpu"), k, d)
        for chunk in (256, chosen):
            start = time.perf_counter()
            for s in range(0, n, chunk):
                batched_head_ttt(w, c, x[s : s + chunk], y[s : s + chunk], q[s : s + chunk], cfg)
            note = " (the evaluator's CPU choice)" if chunk == chosen else ""
            print(f"k {k} d {d}: chunk {chunk:>3}{note}: {n / (time.perf_counter() - start):6.1f} points/s")


if __name__ == "__main__":
    main()
