"""Sparse autoencoders that learn a concept space Φ̂ (paper §3, §E.2, §E.3): top-k (S8) and JumpReLU (S9).

TopKSAE (Gao et al. 2025; the paper's `sae/sae_topk.py`, S8 on 512-d CLIP embeddings, d1 = 4096, k = 16):

    pre = Ψ W_enc + b_enc               (n, d1)  W_enc (d2, d1) xavier-uniform, b_enc = 0
    pre = dropout_p(pre)                          in training only (p = 0.5): fosters diverse concepts
    Φ̂  = top_k(pre)                     (n, d1)  the k largest values kept, signed (no ReLU), the rest 0
    Ψ̂  = Φ̂ D + b_dec                    (n, d2)  D = W_dec with unit-norm rows (one per concept);
                                                  W_dec initialised to W_encᵀ

D is normalised in every forward (the paper's code) and the stored W_dec rows are renormalised after every
optimiser step (`renormalise_decoder`, called by the trainer), so `decoder` is always exactly unit-norm.

JumpReLUSAE (Rajamanoharan et al. 2024, "Gemma Scope"-style; S9 on MNIST, d2 = 256, d1 = 1024):

    Ψ  = trunk(x)                        (n, d2)  the LeNet-5 trunk (conv 5x5 -> c1, pool, conv 5x5 -> c2, pool)
    v  = Ψ W_enc + b_enc                 (n, d1)
    Φ̂ = v ⊙ H(v − θ)                    (n, d1)  θ = exp(log θ) > 0, one threshold per concept
    x̂ = Φ̂ W_dec + b_dec                 (n, 784) a linear decoder back to the pixels
    L0 = Σ_j H(v_j − θ_j)                (n,)     the sparsity penalty

H has no gradient; θ gets one from the straight-through estimator with a rectangle kernel of width ε
(`bandwidth`): ∂Φ̂_j/∂θ_j = −(θ_j/ε) 1{|v_j − θ_j| < ε/2} and ∂L0/∂θ_j = −(1/ε) 1{|v_j − θ_j| < ε/2}.
The paper's §E.2 writes the activation as ReLU(v − θ); we use Gemma Scope's JumpReLU v ⊙ H(v − θ), which
the paper names, and whose active values keep their size (both are positive where active).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from harness.errors import ConfigError
from harness.models.lenet import LeNet, LeNetSpec


def _positive(owner: str, **fields: float) -> None:
    for name, value in fields.items():
        if not value > 0:
            raise ConfigError(f"{owner}.{name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True)
class TopKSAEConfig:
    """Shape of a top-k SAE. Paper (§3.1): input_dim 512 (CLIP), width 8 x 512 = 4096, k = s = 16."""

    input_dim: int  # d2, the embedding dimension
    width: int  # d1, the number of concepts
    k: int = 16  # concepts kept per point after the ramp (the paper's s)
    dropout: float = 0.5  # on the pre-activations, in training (§E.3)
    dropout_rescale: bool = True  # kept values x 1/(1 - p) in training (torch's nn.Dropout, the paper's code)
    decoder_bias: bool = True  # b_dec (config.json "decoder_bias": true)

    def __post_init__(self) -> None:
        for name in ("input_dim", "width", "k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TopKSAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.k > self.width:
            raise ConfigError(f"TopKSAEConfig.k = {self.k} must be <= width = {self.width} (the number of concepts)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TopKSAEConfig.dropout must be in [0, 1), got {self.dropout}")


def top_k(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row (signed: no ReLU), zero the rest. (n, d1) -> (n, d1)."""
    values, index = pre.topk(k, dim=-1)  # (n, k)
    return torch.zeros_like(pre).scatter(-1, index, values)


class TopKSAE(nn.Module):
    """See the module docstring. `forward(x, k)` -> (pre (n, d1), Φ̂ (n, d1), Ψ̂ (n, d2))."""

    def __init__(self, cfg: TopKSAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(nn.init.xavier_uniform_(torch.empty(cfg.input_dim, cfg.width)))  # (d2, d1)
        self.b_enc = nn.Parameter(torch.zeros(cfg.width))  # (d1,)
        self.W_dec = nn.Parameter(nn.functional.normalize(self.W_enc.detach().T.clone(), dim=1))  # (d1, d2)
        self.b_dec = nn.Parameter(torch.zeros(cfg.input_dim), requires_grad=cfg.decoder_bias)  # (d2,)
        # how often each concept was selected, over the samples seen in training (the ghost loss's dead test)
        self.register_buffer("concept_counts", torch.zeros(cfg.width, dtype=torch.float64))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.float64))

    @property
    def decoder(self) -> torch.Tensor:
        """D (d1, d2): W_dec with unit-norm rows (differentiable)."""
        return nn.functional.normalize(self.W_dec, dim=1)

    def pre_activations(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        """x (n, d2) -> Ψ W_enc + b_enc (n, d1); with a generator (training), dropout_p applied (inverted)."""
        pre = x @ self.W_enc + self.b_enc  # (n, d1)
        p = self.cfg.dropout
        if dropout_generator is not None and p > 0:
            keep = torch.rand(pre.shape, generator=dropout_generator, device=pre.device) >= p  # (n, d1)
            pre = pre * keep / (1.0 - p) if self.cfg.dropout_rescale else pre * keep
        return pre

    def decode(self, phi: torch.Tensor) -> torch.Tensor:
        """Φ̂ (n, d1) -> Ψ̂ = Φ̂ D + b_dec (n, d2)."""
        return phi @ self.decoder + self.b_dec

    def forward(self, x: torch.Tensor, k: int | None = None,
                dropout_generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre_activations(x, dropout_generator)  # (n, d1)
        phi = top_k(pre, self.cfg.k if k is None else k)  # (n, d1)
        return pre, phi, self.decode(phi)

    @torch.no_grad()
    def renormalise_decoder(self) -> None:
        """Project the stored decoder rows back to unit norm (after an optimiser step)."""
        self.W_dec.copy_(nn.functional.normalize(self.W_dec, dim=1))

    @torch.no_grad()
    def dead_concepts(self, threshold: float) -> torch.Tensor:
        """(d1,) bool: concepts selected in a fraction <= threshold of the samples seen (all, before any)."""
        return self.concept_counts <= threshold * self.samples_seen

    @torch.no_grad()
    def count_active(self, phi: torch.Tensor) -> None:
        self.concept_counts += (phi != 0).sum(0).to(torch.float64)
        self.samples_seen += phi.shape[0]


@dataclasses.dataclass(frozen=True)
class JumpReLUSAEConfig:
    """S9's SAE (§E.2): the LeNet-5 trunk to Ψ (d2 = c2 x 4 x 4 = 256), d1 = 1024 concepts, linear decoder.

    The paper gives d2, d1 and λ = 1e-3 only; the trunk's channels, the bandwidth and the initial threshold are
    ours. Gemma Scope's ε = θ0 = 1e-3 leave the thresholds where they start here (pre-activations are O(1): almost
    no sample falls in the estimator's window, and E‖Φ̂‖₀ stays near 600); ε = 0.05, θ0 = 0.1 reach E‖Φ̂‖₀ ≈ 15
    in 6 epochs (the paper: 18.9)."""

    width: int = 1024  # d1
    trunk_channels: tuple[int, int] = (6, 16)  # LeNet-5: conv 5x5 -> 6, conv 5x5 -> 16: Ψ of 16 x 4 x 4 = 256
    image_pixels: int = 784  # the decoder reconstructs the 28 x 28 image
    bandwidth: float = 0.05  # ε of the straight-through rectangle kernel
    threshold_init: float = 0.1  # θ at initialisation, every concept

    def __post_init__(self) -> None:
        if self.width < 1 or self.image_pixels < 1:
            raise ConfigError(f"JumpReLUSAEConfig.width and image_pixels must be >= 1, got {self.width}, "
                              f"{self.image_pixels}")
        if len(self.trunk_channels) != 2 or min(self.trunk_channels) < 1:
            raise ConfigError(f"JumpReLUSAEConfig.trunk_channels must be two channel counts >= 1, got "
                              f"{self.trunk_channels}")
        _positive("JumpReLUSAEConfig", bandwidth=self.bandwidth, threshold_init=self.threshold_init)

    @property
    def input_dim(self) -> int:
        """d2: the trunk's flattened output on 28 x 28 images."""
        return self.trunk_channels[1] * 4 * 4


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """v ⊙ H(v − θ); gradient to v where active, to θ by the rectangle-kernel estimator. v (n, d1), θ (d1,)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(v, threshold)
        ctx.bandwidth = bandwidth
        return v * (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_v = grad * (v > threshold).to(v.dtype)
        grad_t = (-(threshold / eps) * _rectangle((v - threshold) / eps) * grad).sum(0)
        return grad_v, grad_t, None


class _Step(torch.autograd.Function):
    """H(v − θ); no gradient to v, to θ by the rectangle-kernel estimator. v (n, d1), θ (d1,)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(v, threshold)
        ctx.bandwidth = bandwidth
        return (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, (-(1.0 / eps) * _rectangle((v - threshold) / eps) * grad).sum(0), None


def jump_relu(v: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """v ⊙ H(v − θ) with the straight-through gradient to θ. v (n, d1), θ (d1,) -> (n, d1)."""
    return _JumpReLU.apply(v, threshold, bandwidth)


def l0_count(v: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Σ_j H(v_j − θ_j) per row (n,), with the straight-through gradient to θ."""
    return _Step.apply(v, threshold, bandwidth).sum(-1)


class JumpReLUSAE(nn.Module):
    """See the module docstring. `forward(images)` -> (v (n, d1), Φ̂ (n, d1), x̂ (n, 784))."""

    def __init__(self, cfg: JumpReLUSAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.trunk_channels
        # the LeNet-5 trunk of the S1 family (its head and training fields are unused here)
        self.trunk = LeNet(LeNetSpec(0, 5, c1, 5, c2, 0.0, 0, 0, 0.0, 0, 0, 0)).trunk
        self.encoder = nn.Linear(cfg.input_dim, cfg.width)  # Ψ -> v
        self.log_threshold = nn.Parameter(torch.full((cfg.width,), float(torch.tensor(cfg.threshold_init).log())))
        self.decoder = nn.Linear(cfg.width, cfg.image_pixels)  # Φ̂ -> x̂

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()  # (d1,)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Ψ (n, d2) of images (n, 1, 28, 28) in [0, 1]."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.encoder(self.features(images))  # (n, d1)
        phi = jump_relu(v, self.threshold, self.cfg.bandwidth)  # (n, d1)
        return v, phi, self.decoder(phi)  # x̂ (n, 784)
