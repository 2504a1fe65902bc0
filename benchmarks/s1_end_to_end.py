"""S1 end to end through the real Ray path, timed: where the wall time goes, and the ratio to the same TTT
work done by the one-point loop (timed on a few points of every model size, extrapolated, stated as such).

    python benchmarks/s1_end_to_end.py -- --paper --device cuda --retriever torch --gpus-per-trial 0.0625
    python benchmarks/s1_end_to_end.py --loop-points 5 -- --sizes 280 600 --test-points 200 --epochs 1

Everything after `--` goes to `studies/model_scaling.py`. Prints: Ray start, the study's wall time, the sum of
the trials' phases (training, features, index, retrieval, TTT; from the rows' `phase_seconds`), the
concurrency that packing reached (sum of trial wall times / study wall time), and the loop ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import polars as pl
import torch

from benchmarks.timing import sync, timed_study, trial_phases
from harness.data.mnist import load_mnist
from harness.trials.mnist import mnist_features
from harness.ttt.linear import HeadTTTConfig, head_ttt_one_point
from studies import model_scaling


def loop_seconds_per_point(cfg, images, points: int, device: torch.device) -> float:
    """Seconds per test point of the one-point TTT loop (nn.Linear + autograd + torch.optim.Adam) for a
    resolved trial config, on `points` test points (features from the study's cache), after one warm-up."""
    feats, weight, bias = mnist_features(cfg, images)
    ttt = HeadTTTConfig(lr=cfg.ttt_lr, steps=cfg.ttt_steps, k=cfg.ttt_k)
    train = torch.from_numpy(feats.train_x).to(device)
    dist = torch.cdist(torch.from_numpy(feats.test_x[: points + 1]).to(device), train)  # exact L2 neighbours
    nb = dist.topk(ttt.k, largest=False).indices
    W, c = torch.from_numpy(weight).to(device), torch.from_numpy(bias).to(device)
    labels = torch.from_numpy(feats.train_y).to(device)
    queries = torch.from_numpy(feats.test_x).to(device)
    head_ttt_one_point(W, c, train[nb[0]], labels[nb[0]], queries[0], ttt)  # warm-up
    sync(device)
    start = time.perf_counter()
    for i in range(1, points + 1):
        head_ttt_one_point(W, c, train[nb[i]], labels[nb[i]], queries[i], ttt)
    sync(device)
    return (time.perf_counter() - start) / points


def main() -> None:
    argv = sys.argv[1:]
    study_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loop-points", type=int, default=5, help="test points per model size timed in the loop")
    p.add_argument("--out", default=None, help="also write the timings as JSON here")
    args = p.parse_args(own)
    cfg, ray_start, study_wall = timed_study(model_scaling, study_args)

    points = pl.read_parquet(Path(cfg.out_dir) / "points.parquet")
    trials, phases = trial_phases(points, "error")
    trial_sum = float(trials["wall_time_s"].sum())
    n_points = points.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error")).height

    # the one-point loop on a few points of each size (seed 0), extrapolated to every trial's test points
    images = load_mnist(cfg.data_dir)
    device = torch.device(cfg.compute.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    per_trial = {t.model_size: t for t in cfg.trials() if t.seed == cfg.seeds[0]}
    loop_total, loop_rows = 0.0, []
    for size, trial in sorted(per_trial.items()):
        resolved = trial.resolved()
        per_point = loop_seconds_per_point(resolved, images, args.loop_points, device)
        n = points.filter((pl.col("model_size") == size) & (pl.col("method") == "ttt") & (pl.col("metric") == "error")
                          ).height
        loop_total += per_point * n
        loop_rows.append((size, resolved.ttt_k, resolved.ttt_steps, per_point, n))

    print(f"\ndevice: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; {trials.height} trials, "
          f"{n_points} test points in all")
    print(f"Ray start: {ray_start:.1f} s; study wall time (after Ray start): {study_wall:.1f} s")
    print(f"trial wall times summed: {trial_sum:.1f} s -> {trial_sum / study_wall:.1f} trials at once on average")
    for name in ("train", "features", "index", "retrieval", "ttt"):
        if name in phases:
            print(f"  {name:<10} {phases[name]:8.1f} s summed over trials ({100 * phases[name] / trial_sum:5.1f} %)")
    print("one-point TTT loop (timed on a few points per size, extrapolated to every trial's points):")
    for size, k, steps, per_point, n in loop_rows:
        print(f"  LeNet-{size:<6} k {k:<4} steps {steps:<4} {1000 * per_point:8.1f} ms/point x {n} points")
    ttt = phases.get("ttt", float("nan"))
    print(f"TTT: batched {ttt:.1f} s (summed over trials) vs loop {loop_total:.0f} s (extrapolated): "
          f"{loop_total / ttt:.0f}x")
    serial = phases.get("train", 0.0) + phases.get("features", 0.0) + phases.get("retrieval", 0.0) + loop_total
    print(f"end to end: {study_wall + ray_start:.1f} s vs the same work one trial and one point at a time "
          f"(training + features + retrieval as measured, TTT by the loop): {serial:.0f} s -> "
          f"{serial / (study_wall + ray_start):.0f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "ray_start_s": ray_start, "study_wall_s": study_wall, "trials": trials.height, "points": n_points,
            "trial_wall_sum_s": trial_sum, "phases_s": phases, "loop_ttt_s": loop_total,
            "loop_per_point_s": {str(s): pp for s, _, _, pp, _ in loop_rows}}, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
