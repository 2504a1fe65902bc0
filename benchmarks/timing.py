"""Timing helpers shared by the benchmarks: waiting for a device, and for those that run through Ray
(ray_scaling, lm_ray_scaling, s1_end_to_end, s7_imagenet_shape) the steady rate and a study's phases."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import polars as pl


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (a CUDA device); a CPU has none."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(out: dict[str, np.ndarray]) -> float:
    """Points/s while every actor is past its first (warm-up) batch and none has finished:
    window [max first-batch end, min last-batch end]; a batch counts by its overlap with the window."""
    rows = list(zip(out["pid"], out["t_start"], out["t_end"], strict=True))  # one per point
    batches = sorted({(int(p), s, e) for p, s, e in rows}, key=lambda b: b[1])
    sizes: dict[tuple[int, float, float], int] = {}
    for p, s, e in rows:
        sizes[(int(p), s, e)] = sizes.get((int(p), s, e), 0) + 1
    pids = {b[0] for b in batches}
    t0 = max(min(e for p, _, e in batches if p == pid) for pid in pids)
    t1 = min(max(e for p, _, e in batches if p == pid) for pid in pids)
    if t1 <= t0:
        raise ValueError("too few batches per actor for a steady window; use more --points or a smaller --batch-size")
    done = sum(sizes[b] * max(0.0, min(b[2], t1) - max(b[1], t0)) / (b[2] - b[1]) for b in batches)
    return done / (t1 - t0)


def timed_study(study, argv: list[str]):
    """Run a study module's `main(argv)` as its command line would, timed: (its parsed config, seconds to join or
    start Ray, seconds of the study itself after that)."""
    import time

    from harness.distributed.runtime import init_ray

    cfg = study.parse(argv)
    start = time.perf_counter()
    init_ray(cfg.ray.address)
    ray_start = time.perf_counter() - start
    start = time.perf_counter()
    study.main(argv)
    return cfg, ray_start, time.perf_counter() - start


def trial_phases(points: pl.DataFrame, metric: str) -> tuple[pl.DataFrame, dict[str, float]]:
    """A study's trials (one row each: model_size, seed, wall_time_s, phase_seconds, device; from the rows of
    `metric`) and their phase_seconds summed over trials."""
    import polars as pl

    trials = points.filter(pl.col("metric") == metric).unique(["config_hash"]).select(
        "model_size", "seed", "wall_time_s", "phase_seconds", "device")
    phases: dict[str, float] = {}
    for raw in trials["phase_seconds"].to_list():
        for name, s in json.loads(raw or "{}").items():
            phases[name] = phases.get(name, 0.0) + s
    return trials, phases
