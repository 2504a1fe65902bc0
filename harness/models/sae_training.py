"""Training of the sparse autoencoders of harness/models/sae.py: one loop, resumable from a checkpoint.

    for step in range(epochs * ceil(n / batch)):        # the whole training set on one device (GPU or CPU)
        lr     = lr0 * schedule(step)                   # linear warm-up over T0 steps, then cosine to step T
        loss   = loss_fn(batch, step)                   # top-k: MSE(Ψ̂, Ψ) + w_ghost · ghost; JumpReLU: MSE + λ L0
        clip ‖∇‖ to grad_clip;  Adam step;  renormalise the decoder rows (top-k)
        every `checkpoint_every` steps and at the end: save model, Adam state and step (atomic)

Paper (§E.3, `sae/config.json`): Adam (0.9, 0.999), lr 3e-4 in the text (1e-3 in config.json), warm-up
T0 = 5,000 steps, cosine horizon T = 1e5, batch 4096, 100 epochs, gradient-norm clip 1, k ramped
128 -> 16 over 10,000 steps, ghost loss weight 1e6 for concepts selected in <= 1e-4 of the samples seen.

    schedule(i) = (i + 1) / T0                                   for i < T0
                = ½ (1 + cos(π · min(1, (i − T0) / (T − T0))))  after       (0 from step T on)
    k(i)        = round(k0 − (k0 − k) · min(1, i / K))
    ghost       = MSE((pre ⊙ dead) D, stop_grad(Ψ − Ψ̂))         decoded without b_dec, as eq. (23)

Randomness is a function of (seed, step): each epoch's order comes from a generator seeded by (seed, epoch),
each step's dropout from one seeded by (seed, step). So a run resumed from a checkpoint takes exactly the
steps an uninterrupted run takes (a test asserts it). A checkpoint records the configs, a fingerprint of the
training data and the device type (CPU and CUDA training differ in the last bits, and the dropout generator lives
on the device); resuming one made under others is refused, naming the file and each difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import ConfigError
from harness.models.sae import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig, l0_count

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SAETrainConfig:
    """The optimisation both SAEs share. Defaults: the paper's top-k run (§E.3; lr from the text)."""

    lr: float = 3e-4  # peak Adam lr: §E.3's text (sae/config.json has 1e-3)
    batch_size: int = 4096
    epochs: int = 100
    warmup_steps: int = 5_000  # T0: linear warm-up
    schedule_steps: int = 100_000  # T: the cosine's horizon (the paper's 100 epochs of 1.28M end near 31k)
    grad_clip: float | None = 1.0  # max global gradient norm (None: no clipping)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1_000  # steps between checkpoints (one is also written at the end)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"SAETrainConfig.lr must be > 0, got {self.lr}")
        for name in ("batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SAETrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SAETrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule_steps <= self.warmup_steps:
            raise ConfigError(f"SAETrainConfig.schedule_steps = {self.schedule_steps} must exceed warmup_steps = "
                              f"{self.warmup_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"SAETrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class TopKTraining:
    """What only the top-k SAE's training has: the sparsity ramp and the ghost-gradient loss (§E.3)."""

    k_start: int = 128  # k0 of the ramp (k itself is TopKSAEConfig.k)
    k_ramp_steps: int = 10_000  # K: steps of the linear ramp k0 -> k (0: no ramp)
    ghost_weight: float = 1e6  # weight of the ghost loss (0: off)
    dead_threshold: float = 1e-4  # dead: selected in at most this fraction of the samples seen so far

    def __post_init__(self) -> None:
        if self.k_start < 1 or self.k_ramp_steps < 0:
            raise ConfigError(f"TopKTraining.k_start must be >= 1 and k_ramp_steps >= 0, got {self.k_start}, "
                              f"{self.k_ramp_steps}")
        if self.ghost_weight < 0 or not 0 <= self.dead_threshold < 1:
            raise ConfigError(f"TopKTraining.ghost_weight must be >= 0 and dead_threshold in [0, 1), got "
                              f"{self.ghost_weight}, {self.dead_threshold}")


@dataclasses.dataclass(frozen=True)
class JumpReLUTraining:
    """What only the JumpReLU SAE's training has: the L0 penalty's weight λ (§E.2: 1e-3) and how the squared
    reconstruction error is reduced over the pixels ("mean", ours, or "sum" as in Gemma Scope; §E.2 is silent).

    With Adam, λ acts on the thresholds only against the reconstruction's own gradient to them: once λ dominates
    it (with "mean", λ = 1e-3 already does), a larger λ changes little, and E‖Φ̂‖₀ is set by how long the
    thresholds climb (5 epochs: ≈ 19, the paper's 18.9). With "sum" the pixel error is 784x larger and λ
    trades sparsity for reconstruction (3 epochs: λ 1e-3 -> E‖Φ̂‖₀ ≈ 109, λ 0.1 -> ≈ 35)."""

    l0_weight: float = 1e-3
    reconstruction: str = "mean"  # "mean" or "sum" of the squared pixel errors, averaged over the batch

    def __post_init__(self) -> None:
        if self.l0_weight < 0:
            raise ConfigError(f"JumpReLUTraining.l0_weight must be >= 0, got {self.l0_weight}")
        if self.reconstruction not in ("mean", "sum"):
            raise ConfigError(f"JumpReLUTraining.reconstruction must be 'mean' or 'sum', got {self.reconstruction!r}")


def lr_factor(step: int, cfg: SAETrainConfig) -> float:
    """The schedule's multiplier of cfg.lr at `step` (0-based): warm-up, then cosine (module docstring)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / (cfg.schedule_steps - cfg.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def sparsity_at(step: int, k: int, ramp: TopKTraining) -> int:
    """k(step): linear from ramp.k_start to k over ramp.k_ramp_steps steps, then k (module docstring)."""
    if ramp.k_ramp_steps == 0:
        return k
    return int(round(ramp.k_start - (ramp.k_start - k) * min(1.0, step / ramp.k_ramp_steps)))


def ghost_loss(pre: torch.Tensor, dead: torch.Tensor, decoder: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """MSE of the dead concepts' decoded pre-activations against the residual (eq. 23; Gao et al. 2025).

    pre (n, d1) pre-activations (after dropout), dead (d1,) bool, decoder D (d1, d2), residual Ψ − Ψ̂ (n, d2),
    detached by the caller. Only dead concepts' encoder columns and decoder rows receive gradient; 0 when
    none is dead (the residual alone is a constant, not a loss)."""
    if not bool(dead.any()):
        return pre.new_zeros(())
    return nn.functional.mse_loss((pre * dead) @ decoder, residual)  # (n, d1) x (d1, d2)


# --- checkpoints ---------------------------------------------------------------------------------------

def data_fingerprint(x: torch.Tensor) -> dict[str, Any]:
    """Rows, shape and a checksum of <= 4096 evenly spaced rows: enough to tell another data set apart."""
    rows = x[:: max(1, x.shape[0] // 4096)].detach().double().cpu()
    return {"rows": int(x.shape[0]), "shape": list(x.shape[1:]), "checksum": round(float(rows.sum()), 6),
            "checksum_sq": round(float((rows * rows).sum()), 6)}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def checkpoint_identity(model_cfg: Any, train: SAETrainConfig, extra: Any, data: dict[str, Any] | None, *,
                        device: str | None = None) -> dict:
    """What a checkpoint must match to be resumed: the three configs, the data fingerprint and the device type
    ("cpu" / "cuda") the SAE trains on. Either of the last two may be None when not known yet (features that
    training still has to make; a device a Ray worker picks): it is not compared then. Training passes both."""
    return _jsonable({"model": {"kind": type(model_cfg).__name__, **dataclasses.asdict(model_cfg)},
                      "train": dataclasses.asdict(train), "extra": dataclasses.asdict(extra), "data": data,
                      "device": device})


def weights_digest(model: nn.Module) -> str:
    """16-hex sha256 of a model's state (each entry's name, dtype, shape and bytes): names one trained SAE."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _differences(stored: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


def check_checkpoint(path: str | os.PathLike, identity: dict) -> dict | None:
    """The checkpoint at `path` if it was made under `identity` (None when there is none); else ConfigError
    naming the file and every differing field. A None data fingerprint or device in `identity` is not compared."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  any unreadable file: name it
        raise ConfigError(f"SAE checkpoint {path}: not a readable checkpoint ({type(e).__name__}: {e}); remove it "
                          "or point --sae-checkpoint elsewhere") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"SAE checkpoint {path}: not a checkpoint of this trainer (format "
                          f"{state.get('format') if isinstance(state, dict) else type(state).__name__})")
    stored = dict(state["identity"])
    now = dict(identity)
    for unknown in ("data", "device"):
        if now.get(unknown) is None or unknown not in stored:  # not known yet; or a checkpoint older than the field
            stored.pop(unknown, None)
            now.pop(unknown, None)
    diff = _differences(stored, now)
    if diff:
        raise ConfigError(f"SAE checkpoint {path} was made with another configuration; resume it with the same "
                          "options, or remove it (or choose another --sae-checkpoint) to train anew:\n  "
                          + "\n  ".join(diff))
    return state


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, identity: dict) -> None:
    from harness.results.atomic import atomic_path  # lazy: the benchmarks import this module without polars

    with atomic_path(path, suffix=".tmp.pt") as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "identity": identity, "step": step, "model": model.state_dict(),
                    "optimizer": opt.state_dict()}, tmp)


# --- the loop ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainingRun:
    steps: int  # optimiser steps taken in all (across resumptions)
    resumed_from: int  # the step the run started from (0: a fresh run)
    final_loss: float  # mean training loss over the last epoch run here (nan if none)


def _seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63 - 1)


def train_loop(model: nn.Module, n: int, loss_fn: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor],
               cfg: SAETrainConfig, *, device: torch.device, checkpoint: str | os.PathLike | None = None,
               identity: dict | None = None, after_step: Callable[[], None] | None = None,
               on_epoch: Callable[[int, float], None] | None = None) -> TrainingRun:
    """Mini-batch Adam over n samples for cfg.epochs (see the module docstring); returns what it did.

    loss_fn(indices (b,) on device, step, dropout generator) -> scalar loss. With `checkpoint`, resumes from the
    file when it holds a checkpoint of `identity` (refused otherwise) and writes one every
    cfg.checkpoint_every steps and at the end."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    step = 0
    path = Path(checkpoint) if checkpoint is not None else None
    identity = identity or {}
    if path is not None:
        state = check_checkpoint(path, identity)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
    start, order, order_epoch = step, None, -1
    losses: list[torch.Tensor] = []
    while step < total:
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(cfg.seed, epoch))).to(device)
            order_epoch, losses = epoch, []
        assert order is not None
        index = order[position * cfg.batch_size : (position + 1) * cfg.batch_size]  # (b,)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        generator = torch.Generator(device=device).manual_seed(_seed(cfg.seed + 1, step))
        loss = loss_fn(index, step, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(loss.detach())
        step += 1
        if path is not None and (step % cfg.checkpoint_every == 0 or step == total):
            _save_checkpoint(path, model, opt, step, identity)
        if position == per_epoch - 1 and on_epoch is not None:
            on_epoch(epoch, float(torch.stack(losses).mean()))
    final = float(torch.stack(losses).mean()) if losses else float("nan")
    model.eval()
    return TrainingRun(steps=step, resumed_from=start, final_loss=final)


def check_training_data(x: torch.Tensor, what: str) -> None:
    """Raise ConfigError naming `what` when x is empty or holds NaN / inf rows (before any step)."""
    if x.shape[0] == 0:
        raise ConfigError(f"{what}: no rows to train the SAE on")
    bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()
    if bad.numel():
        shown = ", ".join(str(int(i)) for i in bad[:5])
        raise ConfigError(f"{what}: {bad.numel()} row(s) (rows {shown}{', ...' if bad.numel() > 5 else ''}) hold "
                          "NaN or inf; the SAE would train on them")


def check_topk_training(model_cfg: TopKSAEConfig, topk: TopKTraining) -> None:
    """Raise naming the field when the ramp would ask for more concepts than the SAE has."""
    if topk.k_start > model_cfg.width:
        raise ConfigError(f"TopKTraining.k_start = {topk.k_start} exceeds the SAE's width = {model_cfg.width} "
                          "concepts: lower the ramp's start (sae_k_start) or widen the SAE")


def train_topk_sae(x: torch.Tensor, model_cfg: TopKSAEConfig, cfg: SAETrainConfig = SAETrainConfig(),
                   topk: TopKTraining = TopKTraining(), *, checkpoint: str | os.PathLike | None = None,
                   on_epoch: Callable[[int, float], None] | None = None,
                   what: str = "SAE training embeddings") -> tuple[TopKSAE, TrainingRun]:
    """A top-k SAE trained on x (n, d2) (on x's device; seeded by cfg.seed), and what the run did."""
    if x.ndim != 2 or x.shape[1] != model_cfg.input_dim:
        raise ConfigError(f"{what}: embeddings of shape {tuple(x.shape)} do not fit the SAE's input_dim = "
                          f"{model_cfg.input_dim}")
    check_training_data(x, what)
    check_topk_training(model_cfg, topk)
    torch.manual_seed(cfg.seed)
    model = TopKSAE(model_cfg).to(x.device)
    model.train()

    def loss_fn(index: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        batch = x[index]  # (b, d2)
        pre, phi, recon = model(batch, k=sparsity_at(step, model_cfg.k, topk), dropout_generator=generator)
        model.count_active(phi)
        loss = nn.functional.mse_loss(recon, batch)
        if topk.ghost_weight > 0:
            dead = model.dead_concepts(topk.dead_threshold)  # (d1,)
            loss = loss + topk.ghost_weight * ghost_loss(pre, dead, model.decoder, (batch - recon).detach())
        return loss

    identity = checkpoint_identity(model_cfg, cfg, topk, data_fingerprint(x), device=x.device.type)
    run = train_loop(model, x.shape[0], loss_fn, cfg, device=x.device, checkpoint=checkpoint, identity=identity,
                     after_step=model.renormalise_decoder, on_epoch=on_epoch)
    return model, run


def train_jumprelu_sae(images: torch.Tensor, model_cfg: JumpReLUSAEConfig, cfg: SAETrainConfig,
                       jump: JumpReLUTraining = JumpReLUTraining(), *, checkpoint: str | os.PathLike | None = None,
                       on_epoch: Callable[[int, float], None] | None = None,
                       what: str = "SAE training images") -> tuple[JumpReLUSAE, TrainingRun]:
    """A JumpReLU SAE trained on images (n, 28, 28) (uint8, or float in [0, 1]) to reconstruct them:
    squared pixel error (mean or sum over pixels, `jump.reconstruction`) + λ · mean L0."""
    if images.ndim != 3 or images.shape[1] * images.shape[2] != model_cfg.image_pixels:
        raise ConfigError(f"{what}: images of shape {tuple(images.shape)} do not fit the SAE's image_pixels = "
                          f"{model_cfg.image_pixels}")
    check_training_data(images.float(), what)
    torch.manual_seed(cfg.seed)
    model = JumpReLUSAE(model_cfg).to(images.device)
    model.train()

    def loss_fn(index: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        batch = as_pixels(images[index])  # (b, 1, 28, 28)
        v, _, recon = model(batch)
        l0 = l0_count(v, model.threshold, model_cfg.bandwidth)  # (b,)
        error = (recon - batch.flatten(1)) ** 2  # (b, 784)
        reconstruction = error.mean() if jump.reconstruction == "mean" else error.sum(1).mean()
        return reconstruction + jump.l0_weight * l0.mean()

    identity = checkpoint_identity(model_cfg, cfg, jump, data_fingerprint(images.float()),
                                   device=images.device.type)
    run = train_loop(model, images.shape[0], loss_fn, cfg, device=images.device, checkpoint=checkpoint,
                     identity=identity, on_epoch=on_epoch)
    return model, run


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """(n, 28, 28) uint8 or float -> (n, 1, 28, 28) float in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x.reshape(x.shape[0], 1, *x.shape[-2:])


# --- what a trained SAE gives, and how good it is --------------------------------------------------------

@torch.no_grad()
def encode(model: TopKSAE | JumpReLUSAE, x: np.ndarray | torch.Tensor, batch_size: int = 8192,
           device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Φ̂ (n, d1) and the reconstruction (n, d2 | 784) of x, float32 numpy, in eval mode (no dropout, final k).

    x: embeddings (n, d2) for a TopKSAE, images (n, 28, 28) for a JumpReLUSAE."""
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    phis, recons = [], []
    for s in range(0, x.shape[0], batch_size):
        chunk = torch.as_tensor(np.asarray(x[s : s + batch_size]) if isinstance(x, np.ndarray) else
                                x[s : s + batch_size]).to(device)
        if isinstance(model, TopKSAE):
            _, phi, recon = model(chunk.float())
        else:
            _, phi, recon = model(as_pixels(chunk))
        phis.append(phi.cpu().numpy())
        recons.append(recon.cpu().numpy())
    return np.concatenate(phis), np.concatenate(recons)


@dataclasses.dataclass(frozen=True)
class SAEReport:
    fvu: float  # fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean x‖²
    dead_fraction: float  # concepts never active on these rows
    active_concepts: float  # mean ‖Φ̂(x)‖₀


def sae_report(x: np.ndarray, phi: np.ndarray, recon: np.ndarray) -> SAEReport:
    """Reconstruction and sparsity of an SAE on rows x (n, ...) with codes phi (n, d1), reconstructions (n, ...)."""
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    if np.asarray(x).dtype == np.uint8:  # images: compared in [0, 1], as the decoder reconstructs them
        flat = flat / 255.0
    residual = ((flat - recon.reshape(flat.shape)) ** 2).sum()
    variance = ((flat - flat.mean(0)) ** 2).sum()
    active = phi != 0
    return SAEReport(fvu=float(residual / variance), dead_fraction=float((~active.any(0)).mean()),
                     active_concepts=float(active.sum(1).mean()))
