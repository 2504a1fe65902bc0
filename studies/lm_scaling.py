"""S3: model scaling of LoRA TTT on the Pile (paper Fig. 4 right, §E.7).

For each model size, Ray Data shards the sampled test sequences over an actor pool; every actor holds
an index replica (one `ray.put`), the sentence embedder and the LM, and runs the batched multi-LoRA
engine. Output: one Parquet table with per-sequence bits per byte for "global" and "ttt" (harness
result schema, metric "bits_per_byte", model_size = parameter count) and a Fig-4-right PNG with
90% bootstrap CIs.

Smoke test (CPU, offline, a tiny random Qwen2 and generated text, about a minute):
    python studies/lm_scaling.py --smoke-test --out results/lm_scaling_smoke
The real study (Pile JSONL(.zst) or HF dataset folders; models as local folders or Qwen2.5 size labels
already in the HF cache):
    python studies/lm_scaling.py --train /data/pile/train/00.jsonl.zst --test /data/pile/test.jsonl.zst \
        --models 0.5B 1.5B 3B 7B 14B 32B --device cuda --out results/lm_scaling
On a Ray cluster (the driver embeds nothing itself: embedding and TTT run in actors):
    ray submit cluster.yaml studies/lm_scaling.py -- --train ... --test ... --models 0.5B 1.5B --device cuda

Placement: one GPU per actor for 0.5B-14B (bf16 weights <= 30 GB plus the LoRA stacks and
activations; lower --max-batch for 14B); 32B (64 GB of bf16 weights) gets 2 GPUs per actor and is
split over them with device_map="auto".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.text import chunk_document, read_corpus  # noqa: E402
from harness.data.text_split import sample_test_indices  # noqa: E402
from harness.distributed.lm_sharding import LMActorSpec as ActorSpec  # noqa: E402
from harness.distributed.lm_sharding import embed_texts_sharded as embed_corpus_ray  # noqa: E402
from harness.distributed.lm_sharding import evaluate_lm_sharded as run_ttt_ray  # noqa: E402
from harness.results.schema import RunInfo, config_hash, point_rows, summarise, write_parquet_atomic  # noqa: E402
from harness.ttt.lora_config import LMTTTConfig  # noqa: E402

GPUS_PER_ACTOR = {"32B": 2, "Qwen/Qwen2.5-32B": 2}  # others: 1


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", help="training corpus: .jsonl / .jsonl.zst / HF dataset folder")
    ap.add_argument("--test", help="test corpus, same formats")
    ap.add_argument("--models", nargs="+", default=["0.5B"], help="model folders or Qwen2.5 size labels")
    ap.add_argument("--out", default="results/lm_scaling")
    ap.add_argument("--fraction", type=float, default=0.01, help="share of the test split (paper: 1%%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unit-chars", type=int, default=4000, help="max characters of one retrieval unit")
    ap.add_argument("--index-kind", default="auto", choices=["auto", "flat", "ivfpq", "hnsw"])
    ap.add_argument("--embedder", default=None, help="HF encoder folder (default all-MiniLM-L6-v2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16, help="test sequences trained together per actor")
    ap.add_argument("--neighbours", type=int, default=None, help="override Table 9's 50 (smoke tests)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override Table 9's 1024 (smoke tests)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny random Qwen2 + generated corpus, CPU")
    ap.add_argument("--ray-address", default=None)
    return ap.parse_args(argv)


def smoke_inputs(workdir: Path) -> tuple[list[str], list[str], list[str]]:
    """(train texts, test texts, [tiny model folder]) generated offline."""
    from harness.data.text import topical_corpus
    from harness.models.tiny_qwen2 import make_tiny_qwen2

    texts, _ = topical_corpus(72, words_per_doc=60, seed=0)
    model = make_tiny_qwen2(workdir / "tiny_qwen2", texts[:60])
    return texts[:60], texts[60:], [str(model)]


def run(args: argparse.Namespace) -> Path:
    import ray

    from harness.retrieval.text_index import TextIndex
    from harness.retrieval.text_index import build_text_retriever as build_faiss_index

    out = Path(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="lm_scaling_"))
    if args.smoke_test:
        train_texts, test_texts, models = smoke_inputs(workdir)
        cfg = LMTTTConfig(num_neighbours=args.neighbours or 4, max_tokens=args.max_tokens or 64,
                          max_query_tokens=32, rank=4)
        fraction = 1.0
    else:
        if not (args.train and args.test):
            raise SystemExit("--train and --test are required (or --smoke-test)")
        train = read_corpus(args.train)
        test = read_corpus(args.test)
        for c in (train, test):
            if c.skipped_lines:
                print(f"{c.source}: skipped {len(c.skipped_lines)} corrupt lines (first: {c.skipped_lines[:5]})")
        train_texts, test_texts, models = train.texts, test.texts, args.models
        overrides = {k: v for k, v in (("num_neighbours", args.neighbours), ("max_tokens", args.max_tokens)) if v}
        cfg = LMTTTConfig(**overrides)
        fraction = args.fraction
    if not ray.is_initialized():
        ray.init(address=args.ray_address)
    on_gpu = args.device.startswith("cuda")

    t0 = time.time()
    units = [u for t in train_texts for u in chunk_document(t, args.unit_chars)]
    vectors = embed_corpus_ray(units, args.embedder, num_actors=args.actors, device=args.device,
                               num_gpus=1.0 if on_gpu else 0.0)
    index = TextIndex(build_faiss_index(vectors, args.index_kind), units, args.embedder or "all-MiniLM-L6-v2")
    index.save(out / "index")
    index_ref = ray.put(index.to_bytes())
    print(f"index: {len(units)} units, dim {index.dim}, {time.time() - t0:.1f} s")

    sample = sample_test_indices(len(test_texts), fraction, args.seed)
    points = [(int(i), test_texts[i]) for i in sample]
    frames = []
    for name in models:
        t1 = time.time()
        gpus = GPUS_PER_ACTOR.get(name, 1) if on_gpu else 0
        spec = ActorSpec(model=name, max_batch=args.max_batch, device=args.device,
                         dtype="bfloat16" if on_gpu else "float32", device_map="auto" if gpus > 1 else None,
                         embedder=args.embedder)
        cols = run_ttt_ray(points, spec, cfg, index_ref, num_actors=args.actors, batch_size=args.max_batch,
                           num_gpus=gpus)
        info = RunInfo(study="S3", dataset="pile" if not args.smoke_test else "synthetic",
                       model_size=int(cols["n_params"][0]), seed=args.seed, k=cfg.num_neighbours,
                       fraction=fraction, config_hash=config_hash({"cfg": cfg.hparams(), "model": name}),
                       device=args.device, wall_time_s=time.time() - t1)
        hp = {**cfg.hparams(), "model": name}
        frames.append(point_rows(info, "global", "bits_per_byte", cols["bpb_global"], cols["point_id"], hp))
        frames.append(point_rows(info, "ttt", "bits_per_byte", cols["bpb_ttt"], cols["point_id"], hp))
        print(f"{name}: {len(points)} sequences, bpb global {cols['bpb_global'].mean():.4f}, "
              f"ttt {cols['bpb_ttt'].mean():.4f}, {time.time() - t1:.1f} s")
    import polars as pl

    table = pl.concat(frames)
    write_parquet_atomic(table, out / "lm_scaling.parquet")
    summary = summarise(table, ["model_size", "method"], group_resample_by=None)
    write_parquet_atomic(summary, out / "lm_scaling_summary.parquet")
    plot_fig4_right(summary, out / "lm_scaling.png")
    (out / "run.json").write_text(json.dumps({"models": models, "n_sequences": len(points), **cfg.hparams()}))
    print(summary)
    return out


def plot_fig4_right(summary, path: Path) -> None:
    """Bits per byte vs parameter count, global (black) and TTT (red), 90% bootstrap CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for method, colour in (("global", "black"), ("ttt", "tab:red")):
        part = summary.filter(summary["method"] == method).sort("model_size")
        x, m = part["model_size"].to_numpy(), part["mean"].to_numpy()
        err = np.stack([m - part["ci_low"].to_numpy(), part["ci_high"].to_numpy() - m])
        ax.errorbar(x, m, yerr=err, color=colour, marker="o", capsize=3, label=method.upper() if method == "ttt"
                    else "global")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("bits per byte")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
