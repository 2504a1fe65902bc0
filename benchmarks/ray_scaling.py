"""Test points/s of linear-head TTT through the Ray Data path (1, 2, ... actors) against calling the
engine directly, on synthetic features of a chosen shape.

    python benchmarks/ray_scaling.py                     # CPU: 1 and 2 actors of 1 CPU, small shape
    python benchmarks/ray_scaling.py --device cuda --gpus-per-actor 1 --actors 1 2 --retriever torch \
        --train 1230000 --dim 512 --classes 1000 --k 600 --steps 50 --points 6144 --batch-size 1024
                                                         # SPEC's ImageNet shape on 1 and 2 GPUs

For each run it prints two rates: steady (points/s while every actor is past its first, warm-up batch
and none has finished; timed inside the actors, so actor start-up, index building and the first call's
lazy initialisation are excluded, as the direct baseline excludes its warm-up batch) and end to end
(points / wall time of evaluate_sharded, start-up included). "direct" is HeadTTTEvaluator called in this
process on the same batches after one warm-up batch, with as many torch threads as one actor has CPUs.
Ray overhead = 1 - ray(1 actor, steady) / direct; scaling = ray(N actors) / ray(1 actor).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import steady_rate  # noqa: E402
from harness.distributed.runtime import init_ray  # noqa: E402
from harness.distributed.sharding import ShardingConfig, evaluate_sharded  # noqa: E402
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator  # noqa: E402
from harness.ttt.head_engines import head_engine_choices  # noqa: E402
from harness.ttt.linear import HeadTTTConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Workload:
    train: int = 20_000  # training points in the index
    dim: int = 64
    classes: int = 10
    k: int = 50
    steps: int = 20
    points: int = 4_000  # test points per run
    seed: int = 0


def synthetic(w: Workload) -> tuple[HeadState, np.ndarray, np.ndarray]:
    """Class-clustered features (means N(0, 1), noise 0.5), labels, a random global head; test points alike."""
    rng = np.random.default_rng(w.seed)
    means = rng.standard_normal((w.classes, w.dim), dtype=np.float32)
    y = rng.integers(0, w.classes, w.train + w.points)
    x = means[y] + 0.5 * rng.standard_normal((y.size, w.dim), dtype=np.float32)  # (N + n, d)
    head_w = 0.01 * rng.standard_normal((w.classes, w.dim), dtype=np.float32)
    state = HeadState(x[: w.train], y[: w.train], head_w, np.zeros(w.classes, np.float32))
    return state, x[w.train:], y[w.train:]


class TimedEvaluator(HeadTTTEvaluator):
    """Adds each batch's start and end time (seconds since the epoch) and the actor's pid as columns."""

    def __call__(self, batch):
        start = time.time()
        out = super().__call__(batch)
        n = len(out["point_id"])
        out["t_start"], out["t_end"] = np.full(n, start), np.full(n, time.time())
        out["pid"] = np.full(n, os.getpid())
        return out


def direct_rate(state, ttt, x, y, batch_size: int, device: str, retriever: str, engine: str = "auto") -> float:
    """Points/s of the evaluator called in this process, batch by batch, after a warm-up batch."""
    ev = HeadTTTEvaluator(state, ttt, retriever=retriever, device=device, engine=engine)
    ids = np.arange(x.shape[0])
    ev({"point_id": ids[:batch_size], "feature": x[:batch_size], "label": y[:batch_size]})  # warm-up
    start = time.perf_counter()
    for s in range(0, x.shape[0], batch_size):
        ev({"point_id": ids[s : s + batch_size], "feature": x[s : s + batch_size], "label": y[s : s + batch_size]})
    return x.shape[0] / (time.perf_counter() - start)


def ray_rates(state, ttt, x, y, sharding: ShardingConfig, retriever: str, engine: str = "auto") -> dict:
    start = time.perf_counter()
    out = evaluate_sharded(state, ttt, x, y, np.arange(x.shape[0]), sharding, retriever=retriever, engine=engine,
                           evaluator_cls=TimedEvaluator)
    wall = time.perf_counter() - start
    return {"actors": sharding.actors, "steady_pts_s": steady_rate(out), "end_to_end_pts_s": x.shape[0] / wall,
            "devices": sorted(set(out["device"].tolist())), "engines": sorted(set(out["engine"].tolist()))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Workload):
        p.add_argument(f"--{f.name}", type=int, default=f.default)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=125)
    p.add_argument("--retriever", default="faiss", choices=["faiss", "torch"])
    p.add_argument("--engine", default="auto", choices=head_engine_choices(),
                   help="head-TTT engine (auto: picked per device where the TTT runs; the figures in "
                        "benchmarks/RESULTS.md were measured with exact)")
    p.add_argument("--no-direct", action="store_true", help="skip the in-process baseline")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    w = Workload(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Workload)})
    ttt = HeadTTTConfig(lr=a.lr, steps=w.steps, k=w.k)
    state, x, y = synthetic(w)
    print(f"workload: {w}, batch {a.batch_size}, retriever {a.retriever}, device {a.device}", flush=True)
    result: dict = {"workload": dataclasses.asdict(w), "device": a.device, "batch_size": a.batch_size, "ray": []}
    if a.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    if not a.no_direct:
        if a.device == "cpu":
            torch.set_num_threads(max(1, int(a.cpus_per_actor)))  # as many threads as one actor gets
        result["direct_pts_s"] = direct_rate(state, ttt, x, y, a.batch_size, a.device, a.retriever, a.engine)
        print(f"direct engine            : {result['direct_pts_s']:9.1f} points/s", flush=True)
    init_ray()
    for n in a.actors:
        sharding = ShardingConfig(actors=n, gpus_per_actor=a.gpus_per_actor, cpus_per_actor=a.cpus_per_actor,
                                  batch_size=a.batch_size)
        r = ray_rates(state, ttt, x, y, sharding, a.retriever, a.engine)
        result["ray"].append(r)
        print(f"ray data, {n} actor(s)     : {r['steady_pts_s']:9.1f} points/s steady, "
              f"{r['end_to_end_pts_s']:9.1f} end to end (start-up included), on {r['devices']}, engine "
              f"{r['engines']}", flush=True)
    base = next((r for r in result["ray"] if r["actors"] == 1), None)
    if base and "direct_pts_s" in result:
        result["ray_overhead"] = 1 - base["steady_pts_s"] / result["direct_pts_s"]
        print(f"ray overhead (1 actor vs direct, steady): {100 * result['ray_overhead']:+.1f} %")
    for r in result["ray"]:
        if base and r["actors"] > 1:
            r["scaling_vs_1"] = r["steady_pts_s"] / base["steady_pts_s"]
            print(f"scaling {r['actors']} actors / 1 actor: {r['scaling_vs_1']:.2f}x steady, "
                  f"{r['end_to_end_pts_s'] / base['end_to_end_pts_s']:.2f}x end to end")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    import ray

    ray.shutdown()
    return result


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors get TimedEvaluator by value
    main()
