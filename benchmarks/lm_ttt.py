"""LoRA TTT speed on the real Qwen2.5 shapes: per-sequence peft loop vs the batched multi-LoRA engine, with MFU.

Random weights of the real shape of each `--shape` (harness.models.lm.QWEN25_SHAPES: 0.5B is hidden 896,
24 layers, 14/2 heads, MLP 4864, vocabulary 151,936, tied embeddings; ... 32B), built from the config on the
device (no download), LoRA r = 64 on `--targets` (default: the paper's q_proj + v_proj), 50 neighbour chunks
of 1024 tokens per test sequence, one Adam step each, then bits per byte on a 1024-token evaluated part (with
and without the adapter). Uses only torch / transformers / peft (runs on the GPU machine as is, from a
checkout: no install, no PYTHONPATH).

    python benchmarks/lm_ttt.py --shape 0.5B 7B --skip-loop --compile --fuse both   # one H200: MFU at 0.5B and 7B
    python benchmarks/lm_ttt.py --device cuda --batch 24 32 --compile             # 0.5B, loop and batched
    python benchmarks/lm_ttt.py --device cpu --tiny --batch 2 4                   # smoke test of the same code path

Per shape and group size it prints seconds per test sequence, training tokens/s, TFLOP/s and MFU. FLOPs are
counted as 4 * N * (training tokens): N the model's parameters, 2N per token forward and 2N for the backward
to the activations (the base weights are frozen, so no weight gradients; the LoRA matmuls and attention are
left out, and so is the forward-only scoring of the evaluated part). MFU = that rate / --peak-tflops (default:
989 TFLOP/s dense bf16 on an H100 / H200, else not printed).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.timing import sync  # noqa: E402
from harness.models.lm import QWEN25_SHAPES, count_parameters, random_qwen25  # noqa: E402
from harness.ttt.lora import PeftLoRATTT, PreparedSequence, training_rows  # noqa: E402
from harness.ttt.lora_batched import BatchedLoRATTT  # noqa: E402
from harness.ttt.lora_config import LMTTTConfig  # noqa: E402

T = TypeVar("T")

TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=4096)
SHAPES = ("tiny", *QWEN25_SHAPES)
# test sequences per batched group when --batch is not given: what fits an 80-141 GB GPU with room (bf16)
DEFAULT_BATCH = {"tiny": 4, "0.5B": 32, "1.5B": 24, "3B": 16, "7B": 8, "14B": 4, "32B": 2}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, no sparsity, by GPU name


def synthetic_sequences(n: int, n_steps: int, tokens: int, vocab: int, seed: int) -> list[PreparedSequence]:
    """n test sequences: n_steps neighbour chunks of `tokens` tokens each, a `tokens`-token evaluated part."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        rows = [training_rows(torch.randint(1, vocab, (tokens,), generator=g).tolist(), tokens)[0]
                for _ in range(n_steps)]
        eval_ids = tuple(torch.randint(1, vocab, (tokens,), generator=g).tolist())
        out.append(PreparedSequence(i, "", eval_ids, 4 * tokens, tuple(rows), n_steps))
    return out


def timed(fn: Callable[[], T], device: str) -> tuple[float, T]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def throughput(s_per_seq: float, n_params: int, steps: int, tokens: int, peak_tflops: float | None) -> dict:
    """Training tokens/s, TFLOP/s at 4 * N * training tokens, and MFU against peak_tflops (None: not known)."""
    train_tokens = steps * tokens
    tflops = 4 * n_params * train_tokens / s_per_seq / 1e12
    return dict(tokens_s=train_tokens / s_per_seq, tflops=tflops,
                mfu=tflops / peak_tflops if peak_tflops else None)


def _rate_text(r: dict) -> str:
    mfu = f"MFU {100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "MFU n/a (no --peak-tflops)"
    return f"{r['tokens_s']:,.0f} tokens/s, {r['tflops']:.1f} TFLOP/s, {mfu}"


def build_model(shape: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """A random-weight causal LM of the shape: a Qwen2.5 size from its config, or the tiny test shape."""
    if shape != "tiny":
        return random_qwen25(shape, dtype=dtype, device=device)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**TINY_SHAPE)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    return model.requires_grad_(False)


def time_batched(engine: BatchedLoRATTT, b: int, steps: int, tokens: int, vocab: int, device: str,
                 loop_s: float, rate: Callable[[float], dict]) -> dict | str:
    """Seconds per test sequence of one group of b sequences (after a 2-step warm-up group)."""
    try:
        engine.run(synthetic_sequences(b, 2, tokens, vocab, seed=1))
        seqs = synthetic_sequences(b, steps, tokens, vocab, seed=2)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        dt, res = timed(functools.partial(engine.run, seqs), device)
    except torch.OutOfMemoryError:
        print(f"batched B = {b}: out of memory", flush=True)
        engine.reset()
        torch.cuda.empty_cache()
        return "oom"
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    r = dict(s_per_seq=dt / b, peak_gib=peak, bpb_ttt_first=res[0].bpb_ttt, **rate(dt / b))
    print(f"batched B = {b}: {dt / b:.3f} s per test sequence, {_rate_text(r)}, peak {peak:.1f} GiB, "
          f"loop / batched = {loop_s / (dt / b):.1f}x; bpb global {res[0].bpb_global:.4f} -> ttt "
          f"{res[0].bpb_ttt:.4f}", flush=True)
    return r


def run_shape(shape: str, args: argparse.Namespace, device: str, dtype: torch.dtype, peak: float | None) -> dict:
    """Loop (unless --skip-loop) and batched engine at one shape; the models are freed before returning."""
    steps, tokens = (4, 64) if shape == "tiny" else (args.steps, args.tokens)
    cfg = LMTTTConfig(max_tokens=tokens, target_modules=tuple(args.targets))
    batches = args.batch or [DEFAULT_BATCH[shape]]
    vocab = int(TINY_SHAPE["vocab_size"] if shape == "tiny" else QWEN25_SHAPES[shape]["vocab_size"])
    result: dict[str, Any] = dict(shape=shape, steps=steps, tokens=tokens, rank=cfg.rank,
                                  targets=list(cfg.target_modules))
    init = None
    loop_s = float("nan")
    if not args.skip_loop:  # its own model copy, freed before the batched engine's is built
        loop = PeftLoRATTT(build_model(shape, dtype, device), cfg, prefix_token=0)
        init = loop.initial_adapter()
        loop.run(synthetic_sequences(1, 2, tokens, vocab, seed=1))
        seqs = synthetic_sequences(args.loop_seqs, steps, tokens, vocab, seed=2)
        dt, res = timed(functools.partial(loop.run, seqs), device)
        loop_s = result["loop_s_per_seq"] = dt / len(seqs)
        result["loop_bpb_ttt_first"] = res[0].bpb_ttt
        print(f"peft loop: {loop_s:.3f} s per test sequence ({len(seqs)} timed); "
              f"bpb global {res[0].bpb_global:.4f} -> ttt {res[0].bpb_ttt:.4f}", flush=True)
        del loop
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    model = build_model(shape, dtype, device)
    n_params = result["params"] = count_parameters(model)
    rate = functools.partial(throughput, n_params=n_params, steps=steps, tokens=tokens, peak_tflops=peak)
    engine = BatchedLoRATTT(model, cfg, prefix_token=0, max_batch=max(batches), init=init,
                            chunk_tokens=args.chunk_tokens, compile_layers=args.compile)
    print(f"== {shape}: {n_params:,} parameters, LoRA r {cfg.rank} on {', '.join(cfg.target_modules)} "
          f"({engine.adapter_parameters:,} per sequence, {engine.adapter_parameters / n_params:.2%}), "
          f"{steps} x {tokens}-token steps", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        b = max(batches)
        engine.run(synthetic_sequences(b, 2, tokens, vocab, seed=1))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            engine.train_group(synthetic_sequences(b, 3, tokens, vocab, seed=3))
            sync(device)
        key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))
    result["loop_s_per_seq"] = loop_s
    result["batched"] = {}
    for variant in args.fuse:
        engine.fuse_loss, engine.fuse_adam = variant in ("loss", "both"), variant in ("adam", "both")
        print(f"-- batched, fuse = {variant}", flush=True)
        for b in batches:
            result["batched"][f"{variant}/{b}"] = time_batched(engine, b, steps, tokens, vocab, device, loop_s, rate)
    del engine, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", nargs="+", default=["0.5B"], choices=SHAPES,
                    help="model shapes to measure, one after another (tiny: a CPU smoke test)")
    ap.add_argument("--tiny", action="store_true", help="same as --shape tiny (tiny model, 4 x 64-token steps)")
    ap.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help=f"batched-engine group sizes to time (default per shape: {DEFAULT_BATCH})")
    ap.add_argument("--targets", nargs="+", default=list(LMTTTConfig().target_modules),
                    help="LoRA target modules (default: the paper's q_proj v_proj)")
    ap.add_argument("--loop-seqs", type=int, default=1, help="test sequences timed in the peft loop")
    ap.add_argument("--steps", type=int, default=50, help="neighbour chunks per test sequence")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per chunk (and of the evaluated part)")
    ap.add_argument("--chunk-tokens", type=int, default=8192, help="LM-head chunk of the fused loss")
    ap.add_argument("--skip-loop", action="store_true", help="time the batched engine only")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer of the batched engine")
    ap.add_argument("--fuse", nargs="+", default=["none"], choices=["none", "loss", "adam", "both"],
                    help="opt-in fused paths of the batched engine to time, in order, on one engine: "
                         "loss = compiled LM-head softmax maths, adam = compiled clip + masked Adam")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense peak TFLOP/s for MFU (default: 989 on an H100 / H200)")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of 3 batched steps")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    shapes = ["tiny"] if args.tiny else args.shape

    import peft
    import transformers

    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"device {name}, dtype {dtype}, peak {peak or 'unknown'} TFLOP/s; compile = {args.compile}", flush=True)
    results = []
    for shape in shapes:
        results.append(run_shape(shape, args, device, dtype, peak))
    print(f"\n{name}, {dtype}; compile = {args.compile}; FLOPs = 4 N x training tokens")
    print("| shape | params | fuse / B | s / test sequence | tokens/s | TFLOP/s | MFU | peak GiB | loop / batched |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for key, b in r["batched"].items():
            if isinstance(b, dict):
                mfu = f"{100 * b['mfu']:.1f} %" if b["mfu"] is not None else "n/a"
                ratio = r["loop_s_per_seq"] / b["s_per_seq"]
                print(f"| {r['shape']} | {r['params']:,} | {key} | {b['s_per_seq']:.3f} | {b['tokens_s']:,.0f} | "
                      f"{b['tflops']:.1f} | {mfu} | {b['peak_gib']:.1f} | {ratio:.1f}x |")
            else:
                print(f"| {r['shape']} | {r['params']:,} | {key} | {b} | - | - | - | - | - |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, dtype=str(dtype), peak_tflops=peak, shapes=results), f, indent=1)
    return results


if __name__ == "__main__":
    main()
