"""Typed option values shared by trial configs: their `Literal` types give the command lines their choices."""

from __future__ import annotations

import dataclasses
from typing import Literal

# Head-TTT engines: "auto" and the names of harness.ttt.head_engines.HEAD_TTT_ENGINES (a test keeps the lists
# equal). "auto" picks per device where the TTT runs (CPU: exact; see head_engines); "exact" is the fp32 torch
# engine; the fused-* engines are Triton GPU paths.
HeadEngine = Literal[
    "auto", "exact", "fused-ieee", "fused-tf32x3", "fused-tf32", "fused-bf16", "fused-fp16", "fused-fp16-state"]
Retriever = Literal["faiss", "torch"]  # kNN backends (harness.retrieval.index.RETRIEVERS): faiss, or exact GEMM + top-k
Device = Literal["cpu", "cuda"]  # where a trial computes (None in a config: cuda when torch sees a GPU)
Split = Literal["test", "val"]  # evaluate on test, or on the validation split when tuning hyperparameters


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """Where a study's trials compute and with which head-TTT engine (the same two options for every study)."""

    device: Device | None = None  # where trials compute (None: cuda when available)
    engine: HeadEngine = "auto"  # head-TTT engine: auto = per device (CPU: exact); exact = fp32 torch; fused-* = Triton
    retriever: Retriever = "faiss"  # kNN index: faiss (CPU, or GPU with faiss-gpu), or torch (exact GEMM + top-k)
