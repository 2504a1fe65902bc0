"""Hyperparameters of LoRA TTT of a causal LM (S3 on the Pile): one place for every default (paper Table 9).

Used by both engines, harness.ttt.lora.PeftLoRATTT (the reference loop) and
harness.ttt.lora_batched.BatchedLoRATTT.
"""

from __future__ import annotations

import dataclasses

from harness.errors import ConfigError

QWEN_LORA_TARGETS: tuple[str, ...] = (  # every linear projection of a Qwen2 / Llama decoder layer
    "q_proj", "k_proj", "v_proj", "o_proj",  # attention projections
    "gate_proj", "up_proj", "down_proj",  # MLP projections
)
# The paper trains "around 1 %" of the parameters with LoRA rank 64: q_proj + v_proj at r 64 are 4,325,376
# parameters, 0.88 % of Qwen2.5-0.5B (1.5B 0.57 %, 3B 0.48 %, 7B 0.27 %, 14B 0.34 %, 32B 0.20 %); all seven
# projections would be 7.1 % of 0.5B (32B: 1.6 %).
PAPER_LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")


@dataclasses.dataclass(frozen=True)
class LMTTTConfig:
    """LoRA TTT of a causal LM on retrieved neighbours, evaluated in bits per byte."""

    rank: int = 64  # Table 9: LoRA rank
    alpha: float = 64.0  # LoRA scale alpha/r = 1; the paper does not state alpha
    target_modules: tuple[str, ...] = PAPER_LORA_TARGETS  # LoRA on these linear layers: ~0.9 % of 0.5B
    num_neighbours: int = 50  # Table 9; trained most-similar-first
    lr: float = 2e-4  # Table 9: Adam learning rate
    adam_eps: float = 1e-8  # Table 9
    adam_betas: tuple[float, float] = (0.9, 0.999)  # torch defaults (tttlm uses them)
    max_tokens: int = 1024  # Table 9: longer neighbours split into chunks, one step per chunk
    grad_clip: float | None = 1.0  # tttlm clips the gradient norm at 1.0 before each step
    max_query_tokens: int = 1024  # split rule: query prefix at most this long (tttlm: 1024)
    adapter_seed: int = 0  # seed of the LoRA A init, identical for every test sequence

    def __post_init__(self) -> None:
        for name in ("target_modules", "adam_betas"):  # lists from JSON / Ray Tune configs -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        checks = [
            ("rank", self.rank >= 1, "must be >= 1"),
            ("alpha", self.alpha > 0, "must be > 0"),
            ("target_modules", len(self.target_modules) > 0, "must name at least one module"),
            ("target_modules", all(isinstance(t, str) and t.isidentifier() for t in self.target_modules),
             "must be module names such as 'q_proj'"),
            ("target_modules", len(set(self.target_modules)) == len(self.target_modules), "must not repeat a name"),
            ("num_neighbours", self.num_neighbours >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("adam_eps", self.adam_eps > 0, "must be > 0"),
            ("adam_betas", len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
             "must be two numbers in [0, 1)"),
            ("max_tokens", self.max_tokens >= 2, "must be >= 2 (a step needs one input and one target)"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "must be None or > 0"),
            ("max_query_tokens", self.max_query_tokens >= 1, "must be >= 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"LMTTTConfig.{name} = {getattr(self, name)!r} {why}")

    @property
    def scale(self) -> float:
        """LoRA output scale alpha / r (peft's `scaling`)."""
        return self.alpha / self.rank

    def hparams(self) -> dict:
        """Every field, JSON-able: what result rows record as the TTT method's hyperparameters."""
        return dataclasses.asdict(self)
