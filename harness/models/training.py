"""Seeded global training of a classifier with Adam and cross-entropy (paper Tables 3 and 7)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import nn

Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    lr: float
    batch_size: int
    epochs: int
    seed: int = 0
    weight_decay: float = 0.0
    # "constant": Adam at lr throughout (the paper's code); "cosine": lr decayed per step to 0 over the run
    # (torch's CosineAnnealingLR), which gets further in a few epochs (S1's embedded default)
    schedule: Schedule = "constant"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 0:
            raise ValueError(f"TrainConfig.epochs must be >= 0, got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")


def train_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Mini-batch Adam on the mean cross-entropy; deterministic given cfg.seed.

    Trains where `inputs` are: model, inputs (n, ...) and labels (n,) must be on one device (the
    caller moves them: the whole training set on the GPU costs one copy, no loader). `prepare` maps a
    batch to the model's input (e.g. uint8 -> standardised float). The batch order comes from a CPU
    generator seeded with cfg.seed, so it is the same on every device. On a CUDA device Adam runs as
    one fused kernel (`fused=True`); on the CPU it is torch's default Adam, so CPU runs are bit-identical
    for a seed. The loss is read back once per epoch (no synchronisation per step).
    `on_epoch(epoch, mean_loss)` lets the caller report progress.
    """
    device = inputs.device
    wrong = {name: t.device for name, t in (("labels", labels), *model.named_parameters()) if t.device != device}
    if wrong:
        raise ValueError(f"train_classifier: inputs are on {device} but {wrong} are not: move them together")
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           **({"fused": True} if device.type == "cuda" else {}))
    n = inputs.shape[0]
    steps = cfg.epochs * -(-n // cfg.batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cfg.schedule == "cosine" and steps else None
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = nn.functional.cross_entropy(model(prepare(inputs[idx])), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
            total += loss.detach() * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch, float(total) / n)
    model.eval()
    return model
