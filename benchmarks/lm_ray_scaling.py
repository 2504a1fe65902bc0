"""S3's batched LoRA TTT through the real Ray Data path (issue 18): scaling over GPU actors, and one actor holding
a model spread over two GPUs.

Each actor is built by harness.distributed.actor_pool.map_actor_pool (Ray Data `map_batches` over an actor pool,
the path the study's LMTTT actors take) and runs the study's engine (BatchedLoRATTT, LoRA engine "batched") on a
random-weight model of a real Qwen2.5 shape (harness.models.lm.random_qwen25, no download) and synthetic test
sequences: `--steps` neighbour chunks of `--tokens` tokens (50 x 1024 as the paper) and a `--tokens`-token
evaluated part, drawn from each point's id. Its output columns are the study's (lm_sharding.result_columns).

    # one nvidia-h200-x2 machine (needs ray; no faiss / polars): 1 then 2 GPU actors, the ratio (target >= 1.9x)
    python benchmarks/lm_ray_scaling.py --device cuda --shape 0.5B --actors 1 2 --batch 32 --points 192 \\
        --compile --fuse both --cpus-per-actor 4
    # the same machine: one actor holding the Qwen2.5-32B shape over both GPUs (device_map="auto", as the study
    # places 32B), seconds per sequence, peak memory per GPU, MFU
    python benchmarks/lm_ray_scaling.py --mode spread --device cuda --shape 32B --batch 4 --points 8
    # CPU smoke test of the same path
    python benchmarks/lm_ray_scaling.py --device cpu --shape tiny --actors 1 2 --batch 2 --points 12 --address local

Rates: steady = sequences/s while every actor is past its first batch and none has finished (timed inside the
actors; model building and a warm-up group run in each actor's __init__, before its first batch); end to end =
sequences / wall time of the whole map_actor_pool call, actor start-up included. Scaling = steady(N) / steady(1).
MFU = 4 * N * training tokens per second / (989 TFLOP/s dense bf16 per H100 / H200 x GPUs of the actor).
What the cluster cannot run (a second GPU actor on a 1-GPU machine, an actor over 2 GPUs) is skipped and said so.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.lm_ttt import PEAK_TFLOPS, SHAPES, TINY_SHAPE, build_model, synthetic_sequences, throughput  # noqa: E402
from benchmarks.timing import steady_rate, sync  # noqa: E402
from harness.distributed.actor_pool import ShardingConfig, map_actor_pool  # noqa: E402
from harness.distributed.lm_sharding import result_columns  # noqa: E402
from harness.distributed.runtime import init_ray  # noqa: E402
from harness.models.lm import QWEN25_SHAPES, count_parameters, random_qwen25  # noqa: E402
from harness.ttt.lora_batched import BatchedLoRATTT  # noqa: E402
from harness.ttt.lora_config import LMTTTConfig  # noqa: E402


class SyntheticLMTTT:
    """Actor: {"point_id"} -> the study's LM TTT columns plus t_start / t_end / pid and peak GiB per GPU.

    Builds the random-weight model (spread over its GPUs with device_map) and the batched engine, and runs one
    warm-up group (compilation, allocator) before its first batch."""

    def __init__(self, shape: str, device: str, device_map: str | None, max_batch: int, steps: int, tokens: int,
                 targets: tuple[str, ...], compile_layers: bool, fuse: bool) -> None:
        import ray

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if device_map is not None:
            model = random_qwen25(shape, dtype=dtype, device_map=device_map)
        else:
            model = build_model(shape, dtype, device)
        self.n_params = count_parameters(model)
        self.cfg = LMTTTConfig(max_tokens=tokens, target_modules=targets)
        self.engine = BatchedLoRATTT(model, self.cfg, prefix_token=0, max_batch=max_batch,  # the "batched" engine
                                     compile_layers=compile_layers, fuse_loss=fuse, fuse_adam=fuse)
        self.vocab = int(TINY_SHAPE["vocab_size"] if shape == "tiny" else QWEN25_SHAPES[shape]["vocab_size"])
        self.steps, self.tokens, self.device = steps, tokens, device
        self.node_id = ray.get_runtime_context().get_node_id()
        self.engine.run(synthetic_sequences(max_batch, 2, tokens, self.vocab, seed=10**6))  # warm-up group
        if device == "cuda":
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seqs = []
        for pid in batch["point_id"]:  # each point's sequence drawn from its id: the same wherever it runs
            (seq,) = synthetic_sequences(1, self.steps, self.tokens, self.vocab, seed=int(pid))
            seqs.append(dataclasses.replace(seq, point_id=int(pid)))
        sync(self.device)
        start = time.time()
        res = self.engine.run(seqs)
        sync(self.device)
        end = time.time()
        out = result_columns(res, self.n_params, self.engine.adapter_parameters, self.device, self.node_id)
        n = len(res)
        out.update(t_start=np.full(n, start), t_end=np.full(n, end), pid=np.full(n, os.getpid()))
        gpus = torch.cuda.device_count() if self.device == "cuda" else 0
        for i in range(gpus):
            out[f"peak_gib_gpu{i}"] = np.full(n, torch.cuda.max_memory_allocated(i) / 2**30)
        return out


def largest_node_gpus() -> float:
    """GPUs of the largest node of the connected Ray cluster (0 without GPUs)."""
    import ray

    return max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)


def run_pool(args: argparse.Namespace, actors: int, gpus_per_actor: float, device_map: str | None) -> dict:
    """One map_actor_pool run: rates, seconds per sequence (mean batch time / batch size), peak GiB per GPU."""
    sharding = ShardingConfig(actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                              batch_size=args.batch)
    kwargs = dict(shape=args.shape, device=args.device, device_map=device_map, max_batch=args.batch,
                  steps=args.steps, tokens=args.tokens, targets=tuple(args.targets), compile_layers=args.compile,
                  fuse=args.fuse == "both")
    start = time.perf_counter()
    out = map_actor_pool({"point_id": np.arange(args.points)}, SyntheticLMTTT, sharding, kwargs=kwargs)
    wall = time.perf_counter() - start
    batches = {(int(p), s, e) for p, s, e in zip(out["pid"], out["t_start"], out["t_end"], strict=True)}
    s_per_seq = float(np.mean([e - s for _, s, e in batches])) / args.batch
    peaks = {k.removeprefix("peak_gib_"): float(out[k].max()) for k in out if k.startswith("peak_gib_")}
    r = dict(actors=actors, gpus_per_actor=gpus_per_actor, points=int(out["point_id"].size),
             end_to_end_seq_s=args.points / wall, s_per_seq_in_actor=s_per_seq, peak_gib=peaks,
             n_params=int(out["n_params"][0]), lora_params=int(out["lora_params"][0]),
             bpb_ttt_mean=float(out["bpb_ttt"].mean()))
    try:
        r["steady_seq_s"] = steady_rate(out)
    except ValueError as e:  # one batch per actor: no steady window
        r["steady_seq_s"], r["steady_note"] = None, str(e)
    return r


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["scaling", "spread"], default="scaling",
                    help="scaling: 1, 2, ... one-GPU actors; spread: one actor over --spread-gpus GPUs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="0.5B", choices=SHAPES)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="pool sizes to run, in order (scaling)")
    ap.add_argument("--spread-gpus", type=int, default=2, help="GPUs of the one actor in --mode spread")
    ap.add_argument("--points", type=int, default=192, help="test sequences per run")
    ap.add_argument("--batch", type=int, default=32, help="test sequences per actor call (one engine group)")
    ap.add_argument("--steps", type=int, default=50, help="neighbour chunks per test sequence")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per chunk (and of the evaluated part)")
    ap.add_argument("--targets", nargs="+", default=list(LMTTTConfig().target_modules), help="LoRA target modules")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (not with spread)")
    ap.add_argument("--fuse", choices=["none", "both"], default="none", help="the engine's fused loss + Adam")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--peak-tflops", type=float, default=None, help="per GPU (default: 989 on an H100 / H200)")
    ap.add_argument("--address", default=None, help="Ray address (default: Ray's own resolution; local: a new one)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.shape == "tiny":
        args.steps, args.tokens = min(args.steps, 4), min(args.tokens, 64)
    if args.mode == "spread" and args.compile:
        ap.error("--compile is not supported with --mode spread (accelerate's device hooks wrap each layer)")
    init_ray(args.address)
    cuda = args.device == "cuda"
    have = largest_node_gpus()
    name = "cpu"
    if cuda:
        import ray

        name = ray.get(ray.remote(num_gpus=1)(lambda: torch.cuda.get_device_name()).remote()) if have else "no GPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"device {name}; largest Ray node: {have:g} GPU(s); shape {args.shape}; {args.points} sequences, "
          f"{args.steps} x {args.tokens}-token steps, B = {args.batch}, LoRA on {', '.join(args.targets)}", flush=True)
    result: dict = dict(device=name, mode=args.mode, shape=args.shape, points=args.points, batch=args.batch,
                        steps=args.steps, tokens=args.tokens, runs=[], not_run=[])
    if args.mode == "scaling":
        for n in args.actors:
            if cuda and n > have:
                why = f"{n} GPU actors: not run (the largest Ray node has {have:g} GPU(s); needs {n})"
                print(why, flush=True)
                result["not_run"].append(why)
                continue
            r = run_pool(args, n, 1.0 if cuda else 0.0, None)
            result["runs"].append(r)
            steady = f"{r['steady_seq_s']:.2f}" if r["steady_seq_s"] else "n/a"
            print(f"{n} actor(s): {steady} sequences/s steady, {r['end_to_end_seq_s']:.2f} end to end; "
                  f"{r['s_per_seq_in_actor']:.3f} s per sequence in an actor", flush=True)
        base = next((r for r in result["runs"] if r["actors"] == 1), None)
        for r in result["runs"]:
            if base is not None and r is not base and r["steady_seq_s"] and base["steady_seq_s"]:
                r["scaling_vs_1"] = r["steady_seq_s"] / base["steady_seq_s"]
                print(f"scaling {r['actors']} actors / 1 actor: {r['scaling_vs_1']:.2f}x steady "
                      f"(target >= 1.9x for 2), {r['end_to_end_seq_s'] / base['end_to_end_seq_s']:.2f}x end to end")
    else:
        if not cuda or have < args.spread_gpus:
            why = (f"one actor over {args.spread_gpus} GPUs ({args.shape}): not run (the largest Ray node has "
                   f"{have:g} GPU(s)" + ("; --device cpu" if not cuda else "") + ")")
            print(why, flush=True)
            result["not_run"].append(why)
        else:
            r = run_pool(args, 1, float(args.spread_gpus), "auto")
            rates = throughput(r["s_per_seq_in_actor"], r["n_params"], args.steps, args.tokens, peak)
            r.update(rates, mfu_of_actor_gpus=rates["mfu"] / args.spread_gpus if rates["mfu"] else None)
            result["runs"].append(r)
            mfu = (f"MFU {100 * r['mfu_of_actor_gpus']:.1f} % of its {args.spread_gpus} GPUs "
                   f"({100 * r['mfu']:.1f} % of one)" if r["mfu"] else "MFU n/a")
            print(f"{args.shape} over {args.spread_gpus} GPUs in one actor: {r['s_per_seq_in_actor']:.2f} s per test "
                  f"sequence, {rates['tokens_s']:,.0f} tokens/s, {rates['tflops']:.1f} TFLOP/s, {mfu}; peak "
                  + ", ".join(f"{k} {v:.1f} GiB" for k, v in r["peak_gib"].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
