"""S11 (theory check): global vs TTT squared error on synthetic LRH data, beside the paper's predictions.

Predictions: for the §C.3 instance (s = 1, w* = 1, noiseless) the global model's expected error is
1 - d2/d1; TTT's excess error scales as σ² s log(d1/s) / k (Proposition 3), and is exactly 0 without noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import polars as pl
import torch

from harness.data.synthetic import LRHConfig, make_lrh
from harness.errors import ConfigError
from harness.registry import register_trial
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.index import build_retriever
from harness.ttt.regression import global_least_squares, local_least_squares


@dataclasses.dataclass(frozen=True)
class TheoryTrialConfig:
    data: LRHConfig
    k: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.data.n_train:
            raise ConfigError(f"k = {self.k} must be between 1 and n_train = {self.data.n_train}")
        if self.data.task != "regression":
            raise ConfigError("the theory check needs LRHConfig.task = 'regression'")


def global_error_prediction(d1: int, d2: int) -> float:
    """§C.3 / Proposition 8: E_Ψ[(y - <Ψ(x), v_global>)²] = 1 - d2/d1."""
    return 1.0 - d2 / d1


def ttt_rate(noise: float, s: int, d1: int, k: int) -> float:
    """Proposition 3's rate σ² s log(d1/s) / k (up to a constant)."""
    return noise**2 * s * math.log(max(d1 / s, math.e)) / k


@register_trial("lrh", TheoryTrialConfig)
def lrh_trial(cfg: TheoryTrialConfig) -> pl.DataFrame:
    """Per-point squared errors of the global and TTT least-squares fits against the noiseless target."""
    start = time.perf_counter()
    data = make_lrh(cfg.data)
    d = cfg.data
    f_test = torch.from_numpy(data.test_phi.astype(np.float64) @ data.w_star.astype(np.float64))  # noiseless target
    v = global_least_squares(torch.from_numpy(data.train_psi), torch.from_numpy(data.train_y))
    global_pred = torch.from_numpy(data.test_psi).double() @ v
    idx = torch.from_numpy(build_retriever(data.train_psi).search(data.test_psi, cfg.k)[1])  # (B, k)
    psi, y = torch.from_numpy(data.train_psi), torch.from_numpy(data.train_y)
    ttt_pred = local_least_squares(psi[idx], y[idx], torch.from_numpy(data.test_psi))
    run = RunInfo(study="theory_check", dataset=f"lrh-d1={d.d1}-s={d.s}-noise={d.noise}", model_size=d.d2,
                  seed=d.seed, k=cfg.k, config_hash=config_hash(cfg), wall_time_s=time.perf_counter() - start)
    hp = json.loads(json.dumps(dataclasses.asdict(d)))
    ids = np.arange(d.n_test)
    return pl.concat([
        point_rows(run, "global", "squared_error", ((global_pred - f_test) ** 2).numpy(), ids, hparams=hp, k=None),
        point_rows(run, "ttt", "squared_error", ((ttt_pred - f_test) ** 2).numpy(), ids, hparams=hp),
    ])
