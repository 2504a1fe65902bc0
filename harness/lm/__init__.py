"""Language-model TTT on the Pile (SPEC study S3, paper §E.7).

Components, one concept per module:
  config     LMTTTConfig: Table 9 hyperparameters, validated
  corpus     Pile JSONL / JSONL.zst / HF-datasets-on-disk readers, chunking into retrieval units
  split      the S3 split rule (query prefix / evaluated suffix) and the seeded test sample
  scoring    rolling-window log-likelihood and bits per byte
  embedder   sentence embedder (all-MiniLM-L6-v2 offline, or any HF encoder) with mean pooling
  index      faiss text index (flat / IVF-PQ / HNSW), saved to and loaded from disk
  model      causal-LM loading (HF name or path, GGUF)
  ttt        per-test-sequence peft LoRA TTT loop (the reference) and sequence preparation
  batched    batched multi-LoRA engine: many test sequences' adapters in one forward/backward
  synthetic  tiny random Qwen2 + offline tokenizer + topical text, for tests and the demo
"""

from harness.lm.config import LMTTTConfig

__all__ = ["LMTTTConfig"]
