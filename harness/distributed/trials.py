"""Trial functions whose test-point evaluation is sharded over Ray actors.

`mnist_trial_sharded(cfg, sharding)` is `harness.trials.mnist.mnist_trial` with the evaluation done by
`evaluate_sharded`: same features (`mnist_features`), same test subset, same rows. Only the
`wall_time_s` column differs from the in-process run (tested: same seed, same table).
"""

from __future__ import annotations

import dataclasses
import time

import polars as pl

from harness.data.mnist import ImageSplits
from harness.distributed.sharding import ShardingConfig, evaluate_sharded
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.trials.mnist import MnistTrialConfig, mnist_features, mnist_trial, test_subset
from harness.ttt.evaluator import HeadState, prediction_metrics
from harness.ttt.linear import HeadTTTConfig


def mnist_trial_sharded(cfg: MnistTrialConfig, sharding: ShardingConfig, images: ImageSplits | None = None,
                        study: str = "model_scaling") -> pl.DataFrame:
    """Per-point rows of one S1 cell (global / ttt / majority x error / cross-entropy), evaluated on
    `sharding.actors` Ray actors. Training and feature extraction run in this process."""
    start = time.perf_counter()
    cfg = cfg.resolved()
    feats, weight, bias = mnist_features(cfg, images)
    x, y = (feats.test_x, feats.test_y) if cfg.split == "test" else (feats.val_x, feats.val_y)
    subset = test_subset(x.shape[0], cfg.test_points)
    out = evaluate_sharded(
        HeadState(feats.train_x, feats.train_y, weight, bias),
        HeadTTTConfig(lr=cfg.ttt_lr, steps=cfg.ttt_steps, k=cfg.ttt_k),
        x[subset], y[subset], subset, sharding, majority_k=cfg.majority_k, retriever=cfg.retriever,
        engine=cfg.engine,
    )
    devices = sorted(set(out.pop("device").tolist()))
    run = RunInfo(
        study=study, dataset=f"mnist-{cfg.split}", model_size=cfg.model_size, seed=cfg.seed, k=cfg.ttt_k,
        fraction=cfg.fraction, config_hash=config_hash(cfg), device="+".join(devices),
        wall_time_s=time.perf_counter() - start,
    )
    # The same rows as mnist_trial builds (TODO(lead): fold both into one `mnist_rows(cfg, out, run)`
    # in harness/trials/mnist.py; this module may not edit that file).
    hp = {"ttt": {"lr": cfg.ttt_lr, "steps": cfg.ttt_steps, "k": cfg.ttt_k}, "majority": {"k": cfg.majority_k},
          "global": {"epochs": cfg.epochs}}
    ks = {"global": None, "ttt": cfg.ttt_k, "majority": cfg.majority_k}
    return pl.concat([
        point_rows(run, method, metric, values, out["point_id"], hparams=hp[method], k=ks[method])
        for method, metric, values in prediction_metrics(out)
    ])


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
