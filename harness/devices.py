"""Where computation runs when a config leaves its device open (None): "cuda" when torch sees a GPU, else the
CPU. One rule for trials, evaluators, encoders and the sweep's record of where a trial computed."""

from __future__ import annotations

import torch


def trial_device(device: str | None) -> torch.device:
    """Where a trial or component computes (global training, features, TTT): `device`, or cuda when torch sees a
    GPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
