"""Linear-head TTT speed on the ImageNet shape: one-point loop vs batched engine vs fused Triton path.

Workload (SPEC, S7): N = 1.23M training points, d = 512, C = 1000 classes, k = 600 neighbours, 50 full-batch
Adam steps at lr 0.02. Synthetic data of the real shapes: random unit-norm features, random labels, a
random global head. Neighbours are retrieved first by exact GEMM + top-k (timed and reported separately,
as kNN queries/s); the TTT timings start from pre-drawn neighbour indices (the feature gather is inside).

From the same run it prints test points/s of
  loop      `head_ttt_one_point` (nn.Linear + autograd + torch.optim.Adam), one point at a time, fp32
  batched   `batched_head_ttt` (B heads stacked, hand-written gradient), fp32, and with tf32 GEMMs
  fused-*   `FusedHeadTTT` (harness/ttt/fused: Triton kernels, a CUDA graph) in each precision mode and batch
            size (fp16 / fp16-state: the split design)
with the ratio to the loop, and agreement with the fp32 references: the fraction of equal argmax
predictions and max |Δlogit| against the loop (its points) and against fp32 `batched_head_ttt` (more points):
the agreement check behind `--engine auto` (harness/ttt/head_engines.py). Needs torch and triton only.

    python benchmarks/ttt_linear.py --device cuda --precisions fp16-state fp16 tf32 --fused-b 256 --min-time 2
                                                                # the fused-engine check (~2-3 minutes, one GPU)
    python benchmarks/ttt_linear.py --device cuda              # one GPU, every precision, default tiles
    python benchmarks/tuning/three_kernel_tiles.py --best-json best.json && \
      python benchmarks/ttt_linear.py --device cuda --blocks-json best.json   # tuned tiles of the three-kernel modes
    python benchmarks/ttt_linear.py --device cpu               # small shapes, seconds (fused = torch fallback)
    TRITON_INTERPRET=1 python benchmarks/ttt_linear.py --device cpu --interpret   # Triton kernels on CPU
Per-kernel timings and tile sweeps: benchmarks/tuning/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness.retrieval.index import TorchExactRetriever
from harness.ttt.fused import FP16_PRECISIONS, FlashBlocks, FusedBlocks, FusedHeadTTT, default_blocks, fused_head_ttt
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt, head_ttt_one_point

ROWS: list[dict] = []


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(msg: str) -> None:
    print(msg, flush=True)


def agreement(logits: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(fraction of equal argmax, max |Δlogit|)."""
    n = min(len(logits), len(ref))
    a, r = logits[:n].float().cpu(), ref[:n].float().cpu()
    return float((a.argmax(1) == r.argmax(1)).float().mean()), float((a - r).abs().max())


def make_data(args, device: torch.device):
    g = torch.Generator(device=device).manual_seed(args.seed)
    N, d, C = args.n_train, args.d, args.classes
    train_x = torch.nn.functional.normalize(torch.randn(N, d, generator=g, device=device), dim=1)
    train_y = torch.randint(0, C, (N,), generator=g, device=device)
    W0 = torch.randn(C, d, generator=g, device=device) * args.head_scale
    c0 = torch.randn(C, generator=g, device=device) * 0.1
    T = args.test_points
    test_x = torch.nn.functional.normalize(torch.randn(T, d, generator=g, device=device), dim=1)
    return train_x, train_y, W0, c0, test_x


def bench_knn(args, train_x: torch.Tensor, test_x: torch.Tensor) -> torch.Tensor:
    """Neighbour indices (T, k) through the harness's torch retriever; kNN queries/s of GEMM + top-k."""
    device = train_x.device
    k = args.k
    retr = TorchExactRetriever(train_x.cpu().numpy(), metric="l2", device=str(device), query_chunk=args.knn_chunk)
    q_np = test_x.cpu().numpy()
    retr.search(q_np[:64], k)  # warm-up
    sync(device)
    t = time.perf_counter()
    _, idx = retr.search(q_np, k)
    sync(device)
    dt = time.perf_counter() - t
    ROWS.append({"variant": "kNN retriever.search (l2, fp32, host tie-break)", "points_s": len(q_np) / dt})
    log(f"kNN TorchExactRetriever.search: {len(q_np)} queries in {dt:.3f} s = {len(q_np) / dt:,.0f} queries/s")
    feats = retr.features
    sq = retr.sq_norms
    for tf32 in (False, True):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            def run():
                for s in range(0, len(test_x), args.knn_chunk):
                    q = test_x[s : s + args.knn_chunk]
                    dist = sq - 2 * (q @ feats.T)
                    torch.topk(dist, k, dim=1, largest=False, sorted=True)
            run()
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            dt = time.perf_counter() - t
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        name = f"kNN GEMM + top-k on device ({'tf32' if tf32 else 'fp32'})"
        ROWS.append({"variant": name, "points_s": len(test_x) / dt})
        log(f"{name}: {len(test_x) / dt:,.0f} queries/s")
    del retr
    return torch.from_numpy(idx).to(device)


def selfcheck(device: torch.device, interpret: bool) -> None:
    """Fused kernels on small odd shapes (several tiles, masked edges, weight decay) vs float64 torch."""
    g = torch.Generator().manual_seed(1)
    for (B, k, C, d, steps, wd) in [(3, 70, 150, 140, 4, 0.01)]:
        W = torch.randn(C, d, generator=g) * 0.1
        c = torch.randn(C, generator=g) * 0.1
        X = torch.nn.functional.normalize(torch.randn(B, k, d, generator=g), dim=-1)
        y = torch.randint(0, C, (B, k), generator=g)
        q = torch.randn(B, d, generator=g)
        cfg = HeadTTTConfig(lr=0.02, steps=steps, k=k, weight_decay=wd)
        r64, W64, _c64 = batched_head_ttt(W.double(), c.double(), X.double(), y, q.double(), cfg, return_heads=True)
        _r32, W32, _ = batched_head_ttt(W, c, X, y, q, cfg, return_heads=True)
        line = [(f"selfcheck B={B} k={k} C={C} d={d} steps={steps} wd={wd}: torch fp32 vs f64 |ΔW| "
                f"{(W32 - W64).abs().max():.1e}")]
        for prec in ("ieee", "tf32x3", "tf32", "bf16", "fp16", "fp16-state"):
            try:
                out, FW, _Fc = fused_head_ttt(W.to(device), c.to(device), X.to(device), y.to(device), q.to(device),
                                             cfg, True, precision=prec, interpret=interpret)
                sync(device)
                line.append(f"{prec}: |ΔW| {(FW.cpu().double() - W64).abs().max():.1e} "
                            f"|Δlogit| {(out.cpu().double() - r64).abs().max():.1e} "
                            f"finite {bool(torch.isfinite(FW).all())}")
            except Exception as e:  # keep going: report every variant
                line.append(f"{prec}: FAILED {type(e).__name__}: {e}")
                traceback.print_exc()
        log("; ".join(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--head-scale", type=float, default=0.1, help="std of the random global head's weights")
    ap.add_argument("--test-points", type=int, default=None, help="test points drawn (timing rotates over them)")
    ap.add_argument("--loop-points", type=int, default=None)
    ap.add_argument("--agree-points", type=int, default=None, help="points compared with fp32 batched_head_ttt")
    ap.add_argument("--batched-b", type=int, nargs="+", default=None)
    ap.add_argument("--fused-b", type=int, nargs="+", default=None)
    ap.add_argument("--precisions", nargs="+", default=["fp16-state", "fp16", "tf32", "bf16", "tf32x3", "ieee"])
    ap.add_argument("--min-time", type=float, default=0.4, help="seconds of timed batches per variant (at least)")
    ap.add_argument("--knn-chunk", type=int, default=1024)
    ap.add_argument("--no-graph", action="store_true", help="fused path without CUDA graphs")
    ap.add_argument("--blocks-json", default=None,
                    help="per-precision tile fields (benchmarks/tuning/three_kernel_tiles.py --best-json); "
                         "default tiles otherwise")
    ap.add_argument("--interpret", action="store_true", help="CPU: run the Triton kernels in the interpreter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    full = {"n_train": 1_230_000, "d": 512, "classes": 1000, "k": 600, "test_points": 1024, "loop_points": 20,
            "agree_points": 256, "batched_b": [64], "fused_b": [8, 16, 32, 64, 128]}
    small = {"n_train": 5000, "d": 32, "classes": 20, "k": 50, "test_points": 64, "loop_points": 8, "agree_points": 32,
                 "batched_b": [16], "fused_b": [8, 16]}
    for key, val in (full if gpu else small).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.interpret and gpu:
        raise SystemExit("--interpret is a CPU mode")
    if args.interpret and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--interpret needs TRITON_INTERPRET=1 in the environment")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 references are fp32
    torch.backends.cudnn.allow_tf32 = False
    if gpu:
        p = torch.cuda.get_device_properties(device)
        log(f"device: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB; torch "
            f"{torch.__version__}")
        try:
            import triton

            log(f"triton {triton.__version__}")
        except ImportError:
            log("triton: not installed (fused path falls back to torch)")
    log(f"workload: N={args.n_train} d={args.d} C={args.classes} k={args.k} steps={args.steps} lr={args.lr}")
    selfcheck(device, args.interpret)

    cfg = HeadTTTConfig(lr=args.lr, steps=args.steps, k=args.k)
    train_x, train_y, W0, c0, test_x = make_data(args, device)
    idx = bench_knn(args, train_x, test_x)  # (T, k)
    T = len(test_x)

    def batch(s: int, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = idx[s:e]
        return train_x[i], train_y[i], test_x[s:e]

    # ---- loop ------------------------------------------------------------------------------------
    L = args.loop_points
    f, y, q = batch(0, 1)
    head_ttt_one_point(W0, c0, f[0], y[0], q[0], cfg)  # warm-up
    sync(device)
    t = time.perf_counter()
    loop_logits, loop_W = [], []
    for j in range(L):
        f, y, q = batch(j, j + 1)
        lg, lw, _ = head_ttt_one_point(W0, c0, f[0], y[0], q[0], cfg)
        loop_logits.append(lg)
        loop_W.append(lw)
    sync(device)
    loop_pps = L / (time.perf_counter() - t)
    loop_logits = torch.stack(loop_logits)
    loop_W = torch.stack(loop_W)
    ROWS.append({"variant": "loop: head_ttt_one_point (fp32)", "points_s": loop_pps, "ratio": 1.0, "agree_loop": 1.0})
    log(f"loop: {loop_pps:,.1f} points/s ({L} points)")

    # ---- fp32 batched reference on the agreement points --------------------------------------------
    A = args.agree_points
    Bref = args.batched_b[0]
    ref_logits = torch.cat([batched_head_ttt(W0, c0, *batch(s, min(s + Bref, A)), cfg) for s in range(0, A, Bref)])
    ag, dl = agreement(ref_logits, loop_logits)
    log(f"batched fp32 vs loop: argmax agreement {ag:.4f}, max |Δlogit| {dl:.2e}")

    def time_variant(name: str, fn, B: int, heads_fn=None) -> None:
        """fn(feats, labels, query) -> logits; timed over rotating batches of B points."""
        try:
            fn(*batch(0, B))  # warm-up (compile, capture)
            sync(device)
            n_done, t0 = 0, time.perf_counter()
            s = 0
            while True:
                e = s + B
                if e > T:
                    s, e = 0, B
                fn(*batch(s, e))
                n_done += B
                s = e
                if gpu:
                    if n_done >= 2 * B or n_done >= T:
                        sync(device)
                        if time.perf_counter() - t0 >= args.min_time:
                            break
                elif time.perf_counter() - t0 >= args.min_time:
                    break
            sync(device)
            pps = n_done / (time.perf_counter() - t0)
            outs = torch.cat([fn(*batch(s, min(s + B, A)))[: min(s + B, A) - s] for s in range(0, A, B)])
            ag_ref, dl_ref = agreement(outs, ref_logits)
            ag_loop, dl_loop = agreement(outs[:L], loop_logits)
            row = {"variant": name, "B": B, "points_s": pps, "ratio": pps / loop_pps, "agree_loop": ag_loop,
                       "dlogit_loop": dl_loop, "agree_ref": ag_ref, "dlogit_ref": dl_ref, "n_ref": A}
            if heads_fn is not None:
                Wh = torch.cat([heads_fn(*batch(s, min(s + B, L)))[: min(s + B, L) - s] for s in range(0, L, B)])
                dW = (Wh - loop_W).abs()
                row.update(dW_max=float(dW.max()), dW_mean=float(dW.mean()))
            ROWS.append(row)
            log(f"{name} B={B}: {pps:,.0f} points/s ({pps / loop_pps:.0f}x loop); vs loop: agree {ag_loop:.3f} "
                f"|Δlogit| {dl_loop:.1e}; vs fp32 batched ({A} pts): agree {ag_ref:.4f} |Δlogit| {dl_ref:.1e}"
                + (f"; |ΔW| max {row['dW_max']:.1e} mean {row['dW_mean']:.1e}" if heads_fn else ""))
        except Exception as e:
            log(f"{name} B={B}: FAILED {type(e).__name__}: {e}")
            traceback.print_exc()
            ROWS.append({"variant": name, "B": B, "error": f"{type(e).__name__}: {e}"[:200]})
        finally:
            if gpu:
                torch.cuda.empty_cache()

    # ---- batched engine --------------------------------------------------------------------------
    for B in args.batched_b:
        time_variant("batched_head_ttt fp32", lambda f, y, q: batched_head_ttt(W0, c0, f, y, q, cfg), B,
                     heads_fn=lambda f, y, q: batched_head_ttt(W0, c0, f, y, q, cfg, return_heads=True)[1])
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        time_variant("batched_head_ttt tf32", lambda f, y, q: batched_head_ttt(W0, c0, f, y, q, cfg),
                     args.batched_b[0])
        torch.backends.cuda.matmul.allow_tf32 = False

    # ---- fused ---------------------------------------------------------------------------------
    tuned: dict = {}
    if args.blocks_json and os.path.exists(args.blocks_json):
        with open(args.blocks_json) as fh:
            tuned = json.load(fh)
        log(f"tuned tiles: {tuned}")
    for prec in args.precisions:
        if not gpu:
            def fn(f, y, q, prec=prec):
                return fused_head_ttt(W0, c0, f, y, q, cfg, precision=prec, interpret=args.interpret)

            def heads(f, y, q, prec=prec):
                return fused_head_ttt(W0, c0, f, y, q, cfg, True, precision=prec, interpret=args.interpret)[1]

            tag = "fused (Triton interpreter)" if args.interpret else "fused (CPU: torch fallback)"
            time_variant(f"{tag} {prec}", fn, args.fused_b[0], heads_fn=heads)
            continue
        small_b = max((b for b in args.fused_b if b <= 32), default=min(args.fused_b))
        bs = args.fused_b if prec in ("tf32", "bf16", "fp16", "fp16-state") else [small_b]
        blocks = ((FlashBlocks if prec in FP16_PRECISIONS else FusedBlocks)(**tuned[prec]) if prec in tuned
                  else default_blocks(prec, device))
        tag = " tuned" if prec in tuned else ""
        for B in bs:
            eng = FusedHeadTTT(W0, c0, cfg, batch=B, precision=prec, cuda_graph=not args.no_graph, blocks=blocks)
            time_variant(f"fused {prec}{tag}" + (" (no graph)" if args.no_graph else " (graph)"), eng, B,
                         heads_fn=lambda f, y, q, eng=eng: eng(f, y, q, return_heads=True)[1])
            del eng
        if tag and prec not in FP16_PRECISIONS:  # the default tiles at one batch size, for comparison
            eng = FusedHeadTTT(W0, c0, cfg, batch=32, precision=prec, cuda_graph=not args.no_graph,
                               blocks=FusedBlocks())
            time_variant(f"fused {prec} FusedBlocks() tiles (graph)", eng, 32)
            del eng
    # ---- table -------------------------------------------------------------------------------------
    log("\n" + "=" * 110)
    log(f"{'variant':<58}{'B':>5}{'points/s':>11}{'x loop':>8}{'agree loop':>11}{'agree ref':>10}{'|Δlogit|':>10}")
    for r in ROWS:
        if "error" in r:
            log(f"{r['variant'][:58]:<58}{r.get('B', ''):>5}  FAILED {r['error'][:40]}")
            continue
        log(f"{r['variant'][:58]:<58}{r.get('B', ''):>5}{r['points_s']:>11,.0f}"
            + (f"{r['ratio']:>8.1f}" if "ratio" in r else f"{'':>8}")
            + (f"{r['agree_loop']:>11.3f}" if "agree_loop" in r else f"{'':>11}")
            + (f"{r['agree_ref']:>10.4f}" if "agree_ref" in r else f"{'':>10}")
            + (f"{r['dlogit_ref']:>10.1e}" if "dlogit_ref" in r else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": ROWS,
                           "device": torch.cuda.get_device_name(device) if gpu else "cpu"}, fh, indent=1)


if __name__ == "__main__":
    main()
