"""The S3 work over a Ray actor pool: embedding a corpus's units, and LoRA TTT of test sequences.

Both go through harness.distributed.actor_pool.map_actor_pool (restarts, retries, the trial's
placement group, the exactly-once check) with Ray's batch-inference pattern: a callable class loads
its models once in `__init__`, `__call__(batch)` does the work on a dict of numpy arrays. The text
index (retriever + texts) is `ray.put` once and every TTT actor holds a replica, so no shared file
system is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from harness.distributed.actor_pool import ShardingConfig, map_actor_pool
from harness.retrieval.text_index import TextIndex
from harness.ttt.lora import SequenceResult
from harness.ttt.lora_config import LMTTTConfig


class TextEmbedder:
    """Actor: {"point_id", "text"} -> {"point_id", "vector" (b, dim) float32 rows, unit-norm when normalize}."""

    def __init__(self, embedder: str | None, device: str, normalize: bool = True) -> None:
        from harness.features.text_embedder import SentenceEmbedder

        self.embedder = SentenceEmbedder(embedder, device=device, normalize=normalize)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"point_id": batch["point_id"], "vector": self.embedder.embed([str(t) for t in batch["text"]])}


def embed_texts_sharded(texts: Sequence[str], embedder: str | None, sharding: ShardingConfig,
                        device: str = "cpu", normalize: bool = True) -> np.ndarray:
    """Embed `texts` on an actor pool (embedder None: all-MiniLM-L6-v2). -> (n, dim) float32, input order."""
    out = map_actor_pool({"point_id": np.arange(len(texts)), "text": list(texts)}, TextEmbedder, sharding,
                         kwargs={"embedder": embedder, "device": device, "normalize": normalize})
    vectors = out["vector"]
    return (np.stack(list(vectors)) if vectors.dtype == object else vectors).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LMActorSpec:
    """What one LM TTT actor loads and runs (the defaults live in the trial config that builds it)."""

    model: str  # folder, Qwen2.5 size label or hub name
    engine: str  # a harness.ttt.lora_engines.LORA_TTT_ENGINES name: "batched" or "peft"
    max_batch: int  # test sequences per engine group
    device: str  # "cpu" or "cuda" (the GPU Ray assigned to the actor)
    dtype: str  # torch dtype name: "bfloat16" on GPU, "float32" on CPU
    device_map: str | None  # "auto": spread one model over the actor's GPUs (32B on 2 GPUs)
    embedder: str | None  # query embedder; None: all-MiniLM-L6-v2 (must match the index's)
    normalize: bool = True  # unit-norm query embeddings (a "cosine" index); False for an "l2" index (tttlm)


def result_columns(results: Sequence[SequenceResult], n_params: int, lora_params: int, device: str,
                   node_id: str) -> dict[str, np.ndarray]:
    """An LM TTT actor's output columns for its engine's results (one row per test sequence)."""
    n = len(results)
    return {
        "point_id": np.array([r.point_id for r in results], dtype=np.int64),
        "n_bytes": np.array([r.n_bytes for r in results], dtype=np.int64),
        "n_neighbours": np.array([r.n_neighbours for r in results], dtype=np.int64),
        "n_steps": np.array([r.n_steps for r in results], dtype=np.int64),
        "bpb_global": np.array([r.bpb_global for r in results], dtype=np.float64),
        "bpb_ttt": np.array([r.bpb_ttt for r in results], dtype=np.float64),
        "n_params": np.full(n, n_params, dtype=np.int64),
        "lora_params": np.full(n, lora_params, dtype=np.int64),  # trainable parameters of one sequence's adapter
        "device": np.array([device] * n),
        "node_id": np.array([node_id] * n),
    }


class LMTTT:
    """Actor: {"point_id", "text"} -> per-sequence bits per byte of the global LM and after LoRA TTT.

    Holds the LM, the engine, the query embedder and a replica of the text index."""

    def __init__(self, index: TextIndex, spec: LMActorSpec, ttt: LMTTTConfig) -> None:
        import ray
        import torch

        from harness.features.text_embedder import SentenceEmbedder
        from harness.models.lm import count_parameters, load_causal_lm, load_tokenizer
        from harness.retrieval.text_index import Retrieval
        from harness.ttt.lora_engines import build_lora_engine

        self.ttt = ttt
        self.node_id = ray.get_runtime_context().get_node_id()
        self.tokenizer = load_tokenizer(spec.model)
        model = load_causal_lm(spec.model, dtype=getattr(torch, spec.dtype), device=spec.device,
                               device_map=spec.device_map)
        self.n_params = count_parameters(model)
        self.device = spec.device
        embed_device = "cpu" if spec.device_map else spec.device
        self.retrieval = Retrieval(SentenceEmbedder(spec.embedder, device=embed_device, normalize=spec.normalize),
                                   index)
        prefix = self.tokenizer.eos_token_id
        if prefix is None:
            raise ValueError(f"tokenizer of {spec.model} has no EOS token to condition the first scored token on")
        self.engine = build_lora_engine(spec.engine, model, ttt, prefix, spec.max_batch,
                                        pad_id=self.tokenizer.pad_token_id or 0)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from harness.ttt.lora import prepare_sequences

        points = [(int(p), str(t)) for p, t in zip(batch["point_id"], batch["text"], strict=True)]
        res = self.engine.run(prepare_sequences(self.tokenizer, points, self.retrieval, self.ttt))
        return result_columns(res, self.n_params, self.engine.adapter_parameters, self.device, self.node_id)


def evaluate_lm_sharded(points: Sequence[tuple[int, str]], spec: LMActorSpec, ttt: LMTTTConfig, index: TextIndex,
                        sharding: ShardingConfig) -> dict[str, np.ndarray]:
    """LoRA TTT of (point_id, text) test sequences on an actor pool, `sharding.batch_size` per call.

    -> columns point_id, n_bytes, n_neighbours, n_steps, bpb_global, bpb_ttt, n_params, lora_params, device, node_id,
    sorted by point_id, every sequence exactly once. `index` is `ray.put` once (or pass its ObjectRef)."""
    return map_actor_pool({"point_id": [p for p, _ in points], "text": [t for _, t in points]}, LMTTT, sharding,
                          shared={"index": index}, kwargs={"spec": spec, "ttt": ttt})
