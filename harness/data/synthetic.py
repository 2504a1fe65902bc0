"""Synthetic data under the linear representation hypothesis (S11, paper §5 and §C.3).

Concepts Φ(x) ∈ R^d1 are s-sparse; the learned features are a random projection Ψ(x) = P Φ(x) ∈ R^d2
with P's columns drawn uniformly from the unit sphere (d2 << d1: concepts in superposition).
Points come in neighbourhoods (clusters) that share one support of s concepts, so neighbours in
Ψ-space share concepts (the paper's Hypotheses 1-3). Targets:
  regression:      y = <Φ(x), w*> + ε,  ε ~ N(0, σ²)
  classification:  y = argmax_c <Φ(x), W*_c>
The §C.3 instance is s = 1, one cluster per concept, coefficient 1, w* = 1, σ = 0: then the global
least-squares model has expected error 1 - d2/d1 while TTT is exact.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from harness.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LRHConfig:
    d1: int = 256  # number of concepts
    d2: int = 32  # feature dimension (model size)
    s: int = 1  # concepts active per point
    n_train: int = 20_000
    n_test: int = 500
    noise: float = 0.0  # σ of the regression noise
    clusters: int | None = None  # neighbourhoods; default d1 // s
    coefficient_jitter: float = 0.0  # 0: Φ(x) = indicator of the support / sqrt(s); > 0: random positive weights
    unit_target: bool = True  # w* = 1 (the §C.3 instance); False: w* ~ N(0, I)
    task: str = "regression"  # "regression" or "classification"
    classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d1", "d2", "s", "n_train", "n_test", "classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LRHConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.s > self.d1:
            raise ConfigError(f"LRHConfig.s = {self.s} must be <= d1 = {self.d1}")
        if self.task not in ("regression", "classification"):
            raise ConfigError(f"LRHConfig.task must be 'regression' or 'classification', got {self.task!r}")
        for name in ("noise", "coefficient_jitter"):  # finite: `noise < 0` alone lets NaN through to every target
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"LRHConfig.{name} must be >= 0 and finite, got {value}")
        if self.clusters is not None and self.clusters < 1:  # 0 would silently mean the default, d1 // s
            raise ConfigError(f"LRHConfig.clusters must be >= 1 (or None: d1 // s), got {self.clusters}")


@dataclasses.dataclass(frozen=True)
class LRHData:
    train_psi: np.ndarray  # (n_train, d2) float32 features Ψ
    train_phi: np.ndarray  # (n_train, d1) float32 concepts Φ
    train_y: np.ndarray  # (n_train,) float32 targets or int64 labels
    test_psi: np.ndarray
    test_phi: np.ndarray
    test_y: np.ndarray
    projection: np.ndarray  # (d2, d1) P, columns on the unit sphere
    w_star: np.ndarray  # (d1,) or (classes, d1)


def make_lrh(cfg: LRHConfig) -> LRHData:
    """Draw one instance of the LRH data model; see the module docstring."""
    rng = np.random.default_rng(cfg.seed)
    clusters = cfg.clusters or max(1, cfg.d1 // cfg.s)
    projection = rng.standard_normal((cfg.d2, cfg.d1))
    projection /= np.linalg.norm(projection, axis=0, keepdims=True)  # columns uniform on S^{d2-1}
    if clusters * cfg.s <= cfg.d1:  # disjoint supports (s = 1: cluster m uses concept m)
        supports = rng.permutation(cfg.d1)[: clusters * cfg.s].reshape(clusters, cfg.s)
    else:
        supports = np.stack([rng.choice(cfg.d1, cfg.s, replace=False) for _ in range(clusters)])
    if cfg.task == "regression":
        w_star = np.ones(cfg.d1) if cfg.unit_target else rng.standard_normal(cfg.d1)
    else:
        w_star = rng.standard_normal((cfg.classes, cfg.d1))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        member = rng.integers(0, clusters, size=n)
        weights = np.ones((n, cfg.s))
        if cfg.coefficient_jitter > 0:
            weights = np.abs(1.0 + cfg.coefficient_jitter * rng.standard_normal((n, cfg.s)))
        weights /= np.linalg.norm(weights, axis=1, keepdims=True)  # ||Φ(x)|| = 1 (A7)
        phi = np.zeros((n, cfg.d1))
        np.put_along_axis(phi, supports[member], weights, axis=1)
        psi = phi @ projection.T  # (n, d2)
        if cfg.task == "regression":
            y = (phi @ w_star + cfg.noise * rng.standard_normal(n)).astype(np.float32)
        else:
            y = (phi @ w_star.T).argmax(axis=1).astype(np.int64)
        return psi.astype(np.float32), phi.astype(np.float32), y

    train = draw(cfg.n_train)
    test = draw(cfg.n_test)
    return LRHData(*train, *test, projection.astype(np.float32), w_star.astype(np.float32))
