"""The LoRA TTT engines by name: "batched" (harness.ttt.lora_batched, many sequences per forward/backward)
and "peft" (harness.ttt.lora, one sequence at a time: the reference the batched engine is tested against)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch

from harness.registry import Registry
from harness.ttt.lora import PeftLoRATTT, PreparedSequence, SequenceResult
from harness.ttt.lora_batched import BatchedLoRATTT
from harness.ttt.lora_config import LMTTTConfig

LoRAEngine = Literal["batched", "peft"]  # the names in LORA_TTT_ENGINES (a test keeps the two equal)


class LoRATTTEngine(Protocol):
    """What a LoRA TTT engine provides: results for prepared sequences, in input order."""

    adapter_parameters: int  # trainable parameters of one test sequence's adapter

    def run(self, seqs: Sequence[PreparedSequence]) -> list[SequenceResult]: ...


# name -> factory(model, cfg, prefix_token, max_batch, pad_id); the model is modified in place
LORA_TTT_ENGINES: Registry[Callable[..., LoRATTTEngine]] = Registry("LoRA TTT engine")


@LORA_TTT_ENGINES.register("batched")
def _batched(model: torch.nn.Module, cfg: LMTTTConfig, prefix_token: int, max_batch: int,
             pad_id: int) -> BatchedLoRATTT:
    return BatchedLoRATTT(model, cfg, prefix_token, max_batch, pad_id=pad_id)


@LORA_TTT_ENGINES.register("peft")
def _peft(model: torch.nn.Module, cfg: LMTTTConfig, prefix_token: int, max_batch: int, pad_id: int) -> PeftLoRATTT:
    return PeftLoRATTT(model, cfg, prefix_token)  # one sequence at a time: max_batch and pad_id do not apply


def build_lora_engine(name: str, model: torch.nn.Module, cfg: LMTTTConfig, prefix_token: int, max_batch: int,
                      pad_id: int = 0) -> LoRATTTEngine:
    """The LoRA TTT engine `name` (a LoRAEngine) around `model`, which it modifies in place."""
    return LORA_TTT_ENGINES.get(name)(model, cfg, prefix_token, max_batch, pad_id)
