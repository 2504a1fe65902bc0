"""LoRA TTT speed on the Qwen2.5-0.5B shape: per-sequence peft loop vs the batched multi-LoRA engine.

Random weights of the real shape (hidden 896, 24 layers, 14/2 heads, MLP 4864, vocabulary 151,936,
tied embeddings), LoRA r = 64 on attention + MLP projections, 50 neighbour chunks of 1024 tokens per
test sequence, one Adam step each, then bits per byte on a 1024-token evaluated part (with and
without the adapter). Uses only torch / transformers / peft (runs on the GPU machine as is).

    python benchmarks/lm_ttt.py --device cuda --batch 24 32 --compile   # one H100: the best reported numbers
    python benchmarks/lm_ttt.py --device cuda --batch 8 16 24           # eager
    python benchmarks/lm_ttt.py --device cpu --tiny --batch 2 4         # smoke test of the same code path
    python benchmarks/lm_ttt.py --device cuda --batch 32 --compile --fuse none both   # opt-in fused loss + Adam

Prints seconds per test sequence for both engines and their ratio (the SPEC's loop reference: 9.9 s).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from harness.ttt.lora import PeftLoRATTT, PreparedSequence, training_rows
from harness.ttt.lora_batched import BatchedLoRATTT
from harness.ttt.lora_config import LMTTTConfig

T = TypeVar("T")

QWEN25_05B_SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        intermediate_size=4864, vocab_size=151_936, rope_theta=1_000_000.0,
                        tie_word_embeddings=True, max_position_embeddings=32_768)
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=4096)


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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], device: str) -> tuple[float, T]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def time_batched(engine: BatchedLoRATTT, b: int, steps: int, tokens: int, vocab: int, device: str,
                 loop_s: float) -> dict | str:
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
    print(f"batched B = {b}: {dt / b:.3f} s per test sequence, peak {peak:.1f} GiB, loop / batched = "
          f"{loop_s / (dt / b):.1f}x; bpb global {res[0].bpb_global:.4f} -> ttt {res[0].bpb_ttt:.4f}", flush=True)
    return dict(s_per_seq=dt / b, peak_gib=peak, bpb_ttt_first=res[0].bpb_ttt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model and short sequences (CPU smoke test)")
    ap.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    ap.add_argument("--batch", type=int, nargs="+", default=[16], help="batched-engine group sizes to time")
    ap.add_argument("--loop-seqs", type=int, default=1, help="test sequences timed in the peft loop")
    ap.add_argument("--steps", type=int, default=50, help="neighbour chunks per test sequence")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per chunk (and of the evaluated part)")
    ap.add_argument("--chunk-tokens", type=int, default=8192, help="LM-head chunk of the fused loss")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer of the batched engine")
    ap.add_argument("--fuse", nargs="+", default=["none"], choices=["none", "loss", "adam", "both"],
                    help="opt-in fused paths of the batched engine to time, in order, on one engine: "
                         "loss = compiled LM-head softmax maths, adam = compiled clip + masked Adam")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of 3 batched steps")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    shape = TINY_SHAPE if args.tiny else QWEN25_05B_SHAPE
    steps, tokens = (4, 64) if args.tiny else (args.steps, args.tokens)
    cfg = LMTTTConfig(max_tokens=tokens)
    torch.manual_seed(0)
    config = Qwen2Config(**shape)
    config._attn_implementation = "sdpa"  # fused attention (flash / memory-efficient kernels on GPU)
    with torch.device(device):
        base = Qwen2ForCausalLM(config).to(dtype).eval()
    base.requires_grad_(False)
    n_params = sum(p.numel() for p in base.parameters())
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    import peft
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"device {name}, dtype {dtype}, params {n_params:,}, {steps} x {tokens}-token steps, r = {cfg.rank}")
    result: dict[str, Any] = dict(device=name, dtype=str(dtype), params=n_params, steps=steps, tokens=tokens,
                                  rank=cfg.rank)

    batched_model = copy.deepcopy(base)
    loop = PeftLoRATTT(base, cfg, prefix_token=0)
    init = loop.initial_adapter()
    vocab = int(shape["vocab_size"])
    if not args.skip_loop:
        warm = synthetic_sequences(1, 2, tokens, vocab, seed=1)
        loop.run(warm)
        seqs = synthetic_sequences(args.loop_seqs, steps, tokens, vocab, seed=2)
        dt, res = timed(functools.partial(loop.run, seqs), device)
        result["loop_s_per_seq"] = dt / len(seqs)
        result["loop_bpb_ttt_first"] = res[0].bpb_ttt
        print(f"peft loop: {dt / len(seqs):.3f} s per test sequence ({len(seqs)} timed); "
              f"bpb global {res[0].bpb_global:.4f} -> ttt {res[0].bpb_ttt:.4f}")
    del loop, base
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    engine = BatchedLoRATTT(batched_model, cfg, prefix_token=0, max_batch=max(args.batch), init=init,
                            chunk_tokens=args.chunk_tokens, compile_layers=args.compile)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        b = max(args.batch)
        engine.run(synthetic_sequences(b, 2, tokens, vocab, seed=1))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            engine.train_group(synthetic_sequences(b, 3, tokens, vocab, seed=3))
            sync(device)
        key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))
    result["batched"] = {}
    loop_s = result.get("loop_s_per_seq", float("nan"))
    table = []
    for variant in args.fuse:
        engine.fuse_loss, engine.fuse_adam = variant in ("loss", "both"), variant in ("adam", "both")
        print(f"-- batched, fuse = {variant}", flush=True)
        for b in args.batch:
            r = time_batched(engine, b, steps, tokens, vocab, device, loop_s)
            result["batched"][b if args.fuse == ["none"] else f"{variant}/{b}"] = r
            table.append((variant, b, r))
    print(f"\n{name}; compile = {args.compile}; peft loop {loop_s:.3f} s per test sequence")
    print("| fuse | B | s / test sequence | peak GiB | loop / batched | bpb ttt (seq 0) |")
    print("|---|---|---|---|---|---|")
    for variant, b, r in table:
        if isinstance(r, dict):
            print(f"| {variant} | {b} | {r['s_per_seq']:.3f} | {r['peak_gib']:.1f} | {loop_s / r['s_per_seq']:.1f}x | "
                  f"{r['bpb_ttt_first']:.5f} |")
        else:
            print(f"| {variant} | {b} | {r} | - | - | - |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
