"""LoRA adapters without peft: a frozen nn.Linear plus a *stack* of n adapters, one per batch row.

    y_i = W x_i + scale * B_a (A_a x_i),  a = router.index[i]        x_i (T, d_in), W (d_out, d_in)
    A (n, r, d_in), B (n, d_out, r), scale = alpha / r

`attach_stacked_lora` swaps every target projection of a model for such a layer; one AdapterRouter,
shared by all of them, says which adapter each row of the next forward uses (None: adapters off).
The init matches peft's default (A kaiming-uniform, B = 0), so a fresh adapter leaves the model as
it is. Used by the batched multi-LoRA TTT engine (harness.ttt.lora_batched).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
from torch import nn


class AdapterRouter:
    """Shared by all stacked layers: which adapter each batch row uses (None = adapters off)."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None  # (N,) long
        self.prefix: int | None = None  # set when index == arange(prefix): slice instead of gather


class StackedLoRALinear(nn.Module):
    """A frozen nn.Linear plus n LoRA adapters; see the module docstring for the formula."""

    def __init__(self, base: nn.Linear, n: int, rank: int, scale: float, router: AdapterRouter) -> None:
        super().__init__()
        self.base, self.scale, self.router = base, scale, router
        d_out, d_in = base.weight.shape
        dev = base.weight.device
        master = torch.float64 if base.weight.dtype == torch.float64 else torch.float32  # >= fp32 master
        self.A = nn.Parameter(torch.zeros(n, rank, d_in, device=dev, dtype=master))  # (n, r, d_in)
        self.B = nn.Parameter(torch.zeros(n, d_out, rank, device=dev, dtype=master))  # (n, d_out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, T, d_in) -> (N, T, d_out)
        y = self.base(x)
        r = self.router
        if r.index is None:
            return y
        if r.prefix is not None:
            a, b = self.A[:r.prefix], self.B[:r.prefix]  # (N, r, d_in), (N, d_out, r)
        else:
            idx = r.index if r.index.device == self.A.device else r.index.to(self.A.device)  # layers on 2 GPUs
            a, b = self.A[idx], self.B[idx]
        lead = x.shape[:-1]
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, d_in)
        h = torch.bmm(x3, a.to(x.dtype).transpose(1, 2))  # (N, T, r)
        # y + scale * h B^T in one GEMM epilogue (no separate add / scale kernels)
        out = torch.baddbmm(y.reshape(x3.shape[0], -1, y.shape[-1]), h, b.to(x.dtype).transpose(1, 2),
                            alpha=self.scale)
        return out.reshape(*lead, out.shape[-1])


def kaiming_adapter_init(shapes: dict[str, tuple[int, int]], rank: int, seed: int
                         ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """peft's default init without peft: A ~ kaiming-uniform(a=sqrt 5), B = 0. shapes: name -> (d_out, d_in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (d_out, d_in) in shapes.items():
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_ with a = sqrt(5) on fan_in = d_in
        a = (torch.rand(rank, d_in, generator=g) * 2 - 1) * bound
        out[name] = (a, torch.zeros(d_out, rank))
    return out


def lora_targets(model: nn.Module, target_modules: Sequence[str]) -> dict[str, nn.Linear]:
    """Module name -> nn.Linear for every linear layer whose last name part is in `target_modules` (peft's rule
    for a list of names). ValueError naming each target that matches no linear layer (and the closest name)."""
    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    leaf_names = sorted({name.rsplit(".", 1)[-1] for name in linear})
    unknown = [t for t in target_modules if t not in leaf_names]
    if unknown:
        hints = []
        for t in unknown:
            close = difflib.get_close_matches(t, leaf_names, n=1)
            hints.append(f"{t!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"the model has no linear layer named {', '.join(hints)}; its linear layers are "
                         f"{', '.join(leaf_names)}")
    return {name: m for name, m in linear.items() if name.rsplit(".", 1)[-1] in target_modules}


def lora_parameter_count(model: nn.Module, target_modules: Sequence[str], rank: int) -> int:
    """Trainable parameters of one LoRA adapter of rank r on the target layers: sum of r * (d_in + d_out).
    Works on a meta-device skeleton (harness.models.lm.model_skeleton): only shapes are read."""
    return sum(rank * (lin.in_features + lin.out_features) for lin in lora_targets(model, target_modules).values())


def attach_stacked_lora(model: nn.Module, target_modules: Sequence[str], n: int, rank: int, scale: float
                        ) -> tuple[AdapterRouter, dict[str, StackedLoRALinear]]:
    """Replace every nn.Linear whose name ends in one of `target_modules` by a StackedLoRALinear of n
    adapters (in place). -> (the shared router, module name -> layer)."""
    router = AdapterRouter()
    layers = {}
    for name, lin in lora_targets(model, target_modules).items():
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        layers[name] = StackedLoRALinear(lin, n, rank, scale, router)
        setattr(parent, name.rsplit(".", 1)[-1], layers[name])
    return router, layers
