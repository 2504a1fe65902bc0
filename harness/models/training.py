"""Seeded global training of a classifier with Adam and cross-entropy (paper Tables 3 and 7)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from harness.errors import ConfigError

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


CHECKPOINT_FORMAT = "train_classifier/2"


def _identity(model: nn.Module, n: int, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the training config, the number of training points, the
    model's parameter shapes and the device type (CPU and CUDA Adam differ: foreach vs fused)."""
    return {"cfg": dataclasses.asdict(cfg), "n": n, "device": device.type,
            "params": {name: list(p.shape) for name, p in model.named_parameters()}}


def _resume(path: Path, identity: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at `path` made under `identity`; None when there is none (or another trial of the same key
    has just finished and removed it); ConfigError naming the file when it is not one, or one of another
    training. Other read failures (OSError) propagate as crashes, which a sweep retries."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        return None
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  any file that does not unpickle: name it
        raise ConfigError(f"training checkpoint {path}: not readable ({type(e).__name__}: {e}); remove it to "
                          "train anew") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"training checkpoint {path}: not a checkpoint of train_classifier; remove it")
    differ = [key for key in identity if state["identity"].get(key) != identity[key]]
    if differ:
        raise ConfigError(f"training checkpoint {path} was made for another training ({', '.join(differ)} "
                          f"differ: checkpoint {[state['identity'].get(k) for k in differ]}, now "
                          f"{[identity[k] for k in differ]}); remove it to train anew")
    return state


def train_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    on_epoch: Callable[[int, float], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> nn.Module:
    """Mini-batch Adam on the mean cross-entropy; deterministic given cfg.seed.

    Trains where `inputs` are: model, inputs (n, ...) and labels (n,) must be on one device (the
    caller moves them: the whole training set on the GPU costs one copy, no loader). `prepare` maps a
    batch to the model's input (e.g. uint8 -> standardised float). The batch order comes from a CPU
    generator seeded with cfg.seed, so it is the same on every device. On a CUDA device Adam runs as
    one fused kernel (`fused=True`); on the CPU it is torch's default Adam, so CPU runs are bit-identical
    for a seed. The loss is read back once per epoch (no synchronisation per step).
    `on_epoch(epoch, mean_loss)` lets the caller report progress.

    `checkpoint`: a file that receives, atomically after every epoch, the model, Adam's state, the schedule, the
    batch-order generator, torch's global generators (dropout's) and the epoch; a run that finds it resumes
    from there and takes exactly the steps an uninterrupted run takes. The caller names it by everything the
    training depends on (config, data, code) and removes it when the result is safe; one made for another
    config, data size or model is refused.
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
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        from harness.results.atomic import atomic_path  # lazy: harness.models stays free of harness.results
    identity = _identity(model, n, cfg, device)
    state = _resume(path, identity, device) if path is not None else None
    first = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if decay is not None:
            decay.load_state_dict(state["schedule"])
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["rng"].cpu())  # dropout draws from the global generators
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        first = state["epoch"]
    model.train()
    for epoch in range(first, cfg.epochs):
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
        if path is not None:
            with atomic_path(path, suffix=".tmp.pt") as tmp:
                torch.save({"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch + 1,
                            "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "schedule": decay.state_dict() if decay is not None else None,
                            "generator": generator.get_state(), "rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}, tmp)
        if on_epoch is not None:
            on_epoch(epoch, float(total) / n)
    model.eval()
    return model
