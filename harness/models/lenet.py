"""The LeNet-style CNN family of S1 (paper §E.4, Table 3) with exactly the paper's parameter counts.

28x28 input, no padding: conv(k1, c1) -> ReLU -> 2x2 max-pool -> conv(k2, c2) -> ReLU -> 2x2 max-pool
-> flatten (feature dim f = c2 * s^2) -> linear head f -> 10. TTT fine-tunes only the head.

Inputs are standardised inside the model, x = (pixel / 255 - mean) / std (the paper's
`Normalize((0.1307,), (0.3081,))` for MNIST), and the weights start from PyTorch's default
initialisation as in the paper's `FlexibleLeNet` (`init="pytorch"`). `init="he"` (He-normal
convolutions with bias 0.01) is an alternative for the one-channel nets, which PyTorch's default
init leaves dead (all features zero) for some seeds: the trials report dead features either way.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
from torch import nn

from harness.errors import ConfigError

Init = Literal["pytorch", "he"]  # the weights' initialisation: PyTorch's default (the paper's), or He-normal
INITS: tuple[str, ...] = ("pytorch", "he")


@dataclasses.dataclass(frozen=True)
class LeNetSpec:
    params: int  # total weights + biases (the paper's model size)
    conv1_kernel: int
    conv1_channels: int
    conv2_kernel: int
    conv2_channels: int
    # Table 3: global training
    lr: float
    batch_size: int
    epochs: int
    # Table 4: TTT of the head
    ttt_lr: float
    ttt_epochs: int
    ttt_k: int
    # Table 5: majority vote
    majority_k: int

    @property
    def feature_dim(self) -> int:
        side = ((28 - self.conv1_kernel + 1) // 2 - self.conv2_kernel + 1) // 2
        return self.conv2_channels * side * side


LENET_SPECS: dict[int, LeNetSpec] = {
    s.params: s
    for s in (
        LeNetSpec(280, 3, 1, 3, 1, 6e-3, 500, 50, 0.05, 50, 200, 8),
        LeNetSpec(600, 5, 2, 3, 2, 2e-3, 200, 50, 5e-3, 200, 50, 5),
        LeNetSpec(1268, 5, 3, 5, 5, 1e-3, 400, 100, 0.01, 200, 10, 8),
        LeNetSpec(1976, 5, 3, 5, 8, 8e-4, 600, 100, 0.01, 200, 200, 5),
        LeNetSpec(2985, 5, 4, 5, 11, 6e-4, 300, 100, 5e-3, 200, 200, 3),
        LeNetSpec(4430, 5, 5, 5, 15, 6e-4, 300, 100, 5e-3, 200, 200, 4),
        LeNetSpec(6386, 5, 6, 5, 20, 2e-3, 400, 100, 1e-3, 200, 50, 6),
        LeNetSpec(11770, 5, 8, 5, 32, 2e-3, 300, 100, 5e-3, 200, 100, 4),
        LeNetSpec(24294, 5, 12, 5, 52, 2e-3, 300, 100, 1e-3, 200, 50, 4),
        LeNetSpec(40818, 5, 16, 5, 72, 6e-4, 100, 50, 1e-3, 200, 200, 4),
        # size_scale 1.0 of the paper's FlexibleLeNet (192-d features): S6's net (Table 6 was tuned on it);
        # training, TTT and majority k from the code's mnist_cnn / lft_cnn / majority_cnn_opt_params.json
        LeNetSpec(3246, 5, 4, 5, 12, 8e-4, 100, 50, 0.01, 50, 200, 3),
    )
}
S1_SIZES: tuple[int, ...] = (280, 600, 1268, 1976, 2985, 4430, 6386, 11770, 24294, 40818)  # Fig 4 left, Table 3


def lenet_for_size(params: int) -> LeNetSpec:
    """The spec with exactly `params` parameters; a clear error lists the valid sizes."""
    try:
        return LENET_SPECS[params]
    except KeyError:
        raise ConfigError(f"model_size {params} is not a LeNet size of the paper; "
                         f"choose from {sorted(LENET_SPECS)}") from None


class LeNet(nn.Module):
    """trunk(x): (n, 1, 28, 28) -> (n, f) penultimate features; head: (n, f) -> (n, 10) logits.

    `standardise` maps uint8 images (n, 28, 28) to the model's input (n, 1, 28, 28) float32,
    (pixel / 255 - pixel_mean) / pixel_std; the two constants are buffers saved with the model."""

    def __init__(self, spec: LeNetSpec, classes: int = 10, init: Init = "pytorch", pixel_mean: float = 0.0,
                 pixel_std: float = 1.0) -> None:
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"init must be one of {list(INITS)}, got {init!r}")
        self.spec = spec
        self.trunk = nn.Sequential(
            nn.Conv2d(1, spec.conv1_channels, spec.conv1_kernel), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(spec.conv1_channels, spec.conv2_channels, spec.conv2_kernel), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(spec.feature_dim, classes)
        self.register_buffer("pixel_mean", torch.tensor(float(pixel_mean)))
        self.register_buffer("pixel_std", torch.tensor(float(pixel_std)))
        if init == "he":
            for m in self.trunk:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.constant_(m.bias, 0.01)

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 28, 28) -> standardised float32 (n, 1, 28, 28) on the images' device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"LeNet.standardise takes uint8 images, got {images.dtype}")
        x = images.float().reshape(images.shape[0], 1, 28, 28) / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Penultimate features (n, f) float32 of uint8 images (n, 28, 28), on the model's device."""
        self.eval()
        device = self.pixel_mean.device
        out = [self.trunk(self.standardise(images[i : i + batch_size].to(device)))
               for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out)


def dead_features(train_features: torch.Tensor | np.ndarray) -> np.ndarray:
    """(f,) bool: the feature dimensions that are zero on every training image (dead ReLU units).

    A LeNet whose features are all dead predicts one class for every input: its error is chance level."""
    x = torch.as_tensor(train_features)
    return (x == 0).all(dim=0).cpu().numpy()
