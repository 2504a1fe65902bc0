"""Head-TTT engines by name, and `auto`, the engine a device gets when none is named.

Every engine has `batched_head_ttt`'s signature, (weight, bias, feats, labels, query, cfg, return_heads=False):
  "exact"        `batched_head_ttt`: the fp32 torch engine, any device
  "fused-<p>"    `fused_head_ttt` at precision p (harness/ttt/fused): Triton kernels, CUDA GPUs only
                 (p: ieee, tf32x3, tf32, bf16, fp16, fp16-state)

"auto" (the default of every trial config and of --engine) is resolved by `resolve_head_engine` where the
device is known (the evaluator, on the process that computes: a Ray actor's own GPU), and the engine that ran
is written into the TTT rows' hparams ("engine"). `auto_head_engine` is the table:

  device                          engine               why
  not CUDA (a CPU)                exact                the fused engines are GPU kernels
  CUDA, capability 9.0 (Hopper:   fused-fp16-state     the fastest engine measured there, and its predictions
  H100, H200)                                          equal the fp32 one-point loop's on benchmarks/
                                                       ttt_linear.py's agreement check on a 9.0 GPU (argmax of
                                                       every point checked, against `head_ttt_one_point` and
                                                       against fp32 `batched_head_ttt`: all agreed on the H100
                                                       and on the H200; benchmarks/RESULTS.md)
                                  fused-tf32           instead, where the head or the training features exceed
                                                       fp16's range (|x| > 60,000: the fp16 modes refuse them);
                                                       it too agreed on every point checked (H100 and H200)
  CUDA, any other capability      exact                no agreement check of a fused engine is recorded on such
                                                       a device, and the kernels compile to other instructions
                                                       there (no wgmma, no TMA stores), so the 9.0 check is no
                                                       evidence: run the benchmark there, then add the
                                                       capability to AUTO_BY_CAPABILITY
  CUDA without triton             exact                the fused engines cannot run

A named engine is never replaced: one that cannot run on the device (a fused engine on a CPU, or without
triton) is a ConfigError naming the `engine` option (--engine), raised before any TTT work.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from harness.errors import ConfigError
from harness.registry import Registry
from harness.ttt.fused import PRECISIONS, fused_engine
from harness.ttt.fused.dispatch import FP16_MAX
from harness.ttt.linear import batched_head_ttt

AUTO = "auto"
HEAD_TTT_ENGINES: Registry = Registry("head TTT engine")
HEAD_TTT_ENGINES.register("exact")(batched_head_ttt)
for _p in PRECISIONS:
    HEAD_TTT_ENGINES.register(f"fused-{_p}")(fused_engine(_p))

# CUDA capability -> (auto's engine for inputs within fp16's range, auto's engine otherwise); a capability is
# listed only once the benchmark's agreement check found that engine's predictions equal to the fp32 loop's there
AUTO_BY_CAPABILITY: dict[tuple[int, int], tuple[str, str]] = {
    (9, 0): ("fused-fp16-state", "fused-tf32"),  # H100 and H200, both checked: benchmarks/RESULTS.md
}


def head_engine_choices() -> list[str]:
    """Every value an `engine` option takes: "auto" and the registered engines."""
    return [AUTO, *HEAD_TTT_ENGINES.names()]


def auto_head_engine(device_type: str, capability: tuple[int, int] | None = None, *, fp16_inputs: bool = True,
                     triton: bool = True) -> str:
    """The engine "auto" runs on a device of `device_type` ("cpu", "cuda", ...) and CUDA `capability` (major, minor);
    fp16_inputs: the head and the training features fit fp16's range; triton: triton can be imported. A pure
    function of its arguments (the table in the module docstring)."""
    if device_type != "cuda" or not triton or capability is None:
        return "exact"
    picks = AUTO_BY_CAPABILITY.get(tuple(capability))  # type: ignore[arg-type]
    if picks is None:
        return "exact"
    return picks[0] if fp16_inputs else picks[1]


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def why_engine_cannot_run(name: str, device_type: str, triton: bool | None = None) -> str | None:
    """Why engine `name` cannot run on a device of `device_type` (None: it can). "auto" and "exact" run anywhere."""
    if name in (AUTO, "exact"):
        return None
    if device_type != "cuda":
        return f"engine {name!r} is a Triton GPU engine, but the TTT computes on the {device_type.upper()}"
    if not (_triton_installed() if triton is None else triton):
        return f"engine {name!r} runs Triton kernels, but triton is not installed"
    return None


def check_head_engine_name(name: str) -> None:
    """Raise ConfigError naming `engine` unless `name` is "auto" or a registered engine."""
    if name not in head_engine_choices():
        raise ConfigError(f"engine must be one of {head_engine_choices()}, got {name!r}")


def resolve_head_engine(name: str, device: torch.device | str, operands: tuple[np.ndarray, ...] = ()) -> str:
    """The engine that runs for option value `name` on `device`: "auto" resolved by `auto_head_engine` (the device's
    type and CUDA capability; fp16_inputs: whether `operands`, the head weight and training features the engine
    will take, fit fp16's range), any other name itself. Raises ConfigError naming the `engine` option (--engine)
    for an unknown name or an engine that cannot run on `device`."""
    check_head_engine_name(name)
    dev = torch.device(device)
    if name == AUTO:
        if dev.type != "cuda":
            return auto_head_engine(dev.type)
        return auto_head_engine(dev.type, torch.cuda.get_device_capability(dev), fp16_inputs=fits_fp16(*operands),
                                triton=_triton_installed())
    reason = why_engine_cannot_run(name, dev.type)
    if reason is not None:
        raise ConfigError(f"{reason}; set engine (--engine) to 'auto' or 'exact', or compute on a CUDA GPU")
    return name


def fits_fp16(*arrays: np.ndarray) -> bool:
    """Every value of these arrays lies within the fp16 modes' range (|x| <= 60,000; NaN does not)."""
    return all(a.size == 0 or max(float(a.max()), -float(a.min())) <= FP16_MAX for a in arrays)
