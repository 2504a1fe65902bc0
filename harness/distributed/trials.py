"""Trial functions whose test-point evaluation is sharded over Ray actors.

`mnist_trial_sharded(cfg, sharding)` is `harness.trials.mnist.mnist_trial` with the evaluation done by
`evaluate_sharded`: same features, same test subset, same rows. Only the
`wall_time_s` column differs from the in-process run (tested: same seed, same table).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from harness.data.mnist import ImageSplits
from harness.distributed.sharding import ShardingConfig, evaluate_sharded
from harness.trials.mnist import MnistTrialConfig, mnist_trial
from harness.ttt.evaluator import HeadState
from harness.ttt.linear import HeadTTTConfig


def mnist_trial_sharded(cfg: MnistTrialConfig, sharding: ShardingConfig, images: ImageSplits | None = None,
                        study: str = "model_scaling") -> pl.DataFrame:
    """Per-point rows of one S1 cell (global / ttt / majority x error / cross-entropy), evaluated on
    `sharding.actors` Ray actors. Training and feature extraction run in this process."""

    def evaluate(state: HeadState, ttt: HeadTTTConfig, x: np.ndarray, y: np.ndarray, point_ids: np.ndarray,
                 trial: MnistTrialConfig) -> tuple[dict[str, np.ndarray], str]:
        out = evaluate_sharded(state, ttt, x, y, point_ids, sharding, majority_k=trial.majority_k,
                               retriever=trial.retriever, engine=trial.engine)
        return out, "+".join(sorted(set(out.pop("device").tolist())))

    return mnist_trial(cfg, images, study=study, evaluate=evaluate)


SHARDING_KEYS = {f.name for f in dataclasses.fields(ShardingConfig)}
TRIAL_KEYS = {f.name for f in dataclasses.fields(MnistTrialConfig)}


def mnist_config_from_dict(config: dict) -> tuple[MnistTrialConfig, ShardingConfig | None, str]:
    """Split a flat sweep config into (trial config, sharding or None for in-process, study name).

    Keys: MnistTrialConfig fields, ShardingConfig fields (`actors` = 0 or absent: in-process), `study`.
    Unknown keys raise naming them, so a typo in a sweep is caught before the cluster does work."""
    unknown = set(config) - TRIAL_KEYS - SHARDING_KEYS - {"study"}
    if unknown:
        raise ValueError(f"unknown MNIST trial config keys {sorted(unknown)}; allowed: "
                         f"{sorted(TRIAL_KEYS | SHARDING_KEYS | {'study'})}")
    trial = MnistTrialConfig(**{k: v for k, v in config.items() if k in TRIAL_KEYS})
    sharding_args = {k: v for k, v in config.items() if k in SHARDING_KEYS}
    sharding = ShardingConfig(**sharding_args) if sharding_args.get("actors", 0) > 0 else None
    return trial, sharding, config.get("study", "model_scaling")


def mnist_sweep_trial(config: dict, images: ImageSplits | None = None) -> pl.DataFrame:
    """The pure trial function of every MNIST sweep (S1, S4, Optuna tuning): flat config in, rows out."""
    trial, sharding, study = mnist_config_from_dict(config)
    if sharding is None:
        return mnist_trial(trial, images, study=study)
    return mnist_trial_sharded(trial, sharding, images, study=study)
