"""Ray Data sharding of the test set over a pool of evaluator actors, one index replica per actor.

    test points ──► Ray Dataset (blocks of `batch_size` points)
                    │ map_batches(ReplicaEvaluator, compute=ActorPoolStrategy(size=actors))
                    ▼
    actor i: __init__  ray.get(state)  ──► its own retriever + head on its device (once)
             __call__  batch ──► HeadTTTEvaluator(batch) ──► per-point columns
                    ▼
    driver: concatenate, sort by point_id, check every point came back exactly once

The HeadState (training features, labels, global head) is `ray.put` once; actors resolve the
reference in `__init__`, so nothing large travels with a batch. Actors are restartable and their
tasks retried (`max_restarts`, `max_task_retries`): a batch whose actor dies is recomputed, and
since TTT starts every point from the global head the retried result is the same.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from harness.distributed.runtime import init_ray, require_resources
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator
from harness.ttt.linear import HeadTTTConfig


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """How the test set is spread over actors. One actor holds one full index replica."""

    actors: int = 2
    gpus_per_actor: float = 0.0  # fractions share a GPU between actors
    cpus_per_actor: float = 1.0
    batch_size: int = 256  # test points per map_batches call
    max_restarts: int = 3  # actor restarts after a crash (-1: unlimited)
    max_task_retries: int = 3  # retries of a batch whose actor died (-1: unlimited)
    on_missing_gpu: str = "error"  # or "cpu": warn and run the actors on CPU

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"ShardingConfig.actors must be >= 1, got {self.actors}")
        if self.batch_size < 1:
            raise ValueError(f"ShardingConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.gpus_per_actor < 0:
            raise ValueError(f"ShardingConfig.gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"ShardingConfig.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.on_missing_gpu not in ("error", "cpu"):
            raise ValueError(f"ShardingConfig.on_missing_gpu must be 'error' or 'cpu', got {self.on_missing_gpu!r}")


class ReplicaEvaluator:
    """The actor class: resolves the shared state once, builds its own evaluator (index replica)."""

    def __init__(self, state_ref: list, ttt: HeadTTTConfig, evaluator_cls: type, evaluator_kwargs: dict) -> None:
        state: HeadState = ray.get(state_ref[0])  # wrapped in a list so Ray hands us the reference
        with warnings.catch_warnings():  # object-store arrays are read-only; the evaluator never writes them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.evaluator = evaluator_cls(state, ttt, **evaluator_kwargs)
        self.device = str(self.evaluator.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.evaluator(batch)
        out["device"] = np.full(len(out["point_id"]), self.device)
        return out


def _map_replicas(ds: ray.data.Dataset, state_ref: ray.ObjectRef, ttt: HeadTTTConfig, evaluator_cls: type,
                  sharding: ShardingConfig, gpus: float, evaluator_kwargs: dict) -> ray.data.Dataset:
    placement = {}
    pg = ray.util.get_current_placement_group()
    if pg is not None:  # inside a Ray Tune trial: the actors use the bundles the trial reserved for them
        placement["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    return ds.map_batches(
        ReplicaEvaluator,
        fn_constructor_args=([state_ref], ttt, evaluator_cls, evaluator_kwargs),
        batch_size=sharding.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=sharding.actors),
        num_cpus=sharding.cpus_per_actor,
        num_gpus=gpus,
        max_restarts=sharding.max_restarts,
        max_task_retries=sharding.max_task_retries,
        **placement,
    )


def evaluate_sharded(
    state: HeadState,
    ttt: HeadTTTConfig,
    features: np.ndarray,
    labels: np.ndarray,
    point_ids: np.ndarray,
    sharding: ShardingConfig = ShardingConfig(),
    majority_k: int = 0,
    retriever: str = "faiss",
    metric: str = "l2",
    engine: str = "exact",
    evaluator_cls: type = HeadTTTEvaluator,
) -> dict[str, np.ndarray]:
    """Evaluate test points (features (n, d), labels (n,), unique point_ids (n,)) on a Ray actor pool.

    Returns the evaluator's per-point columns (point_id, label, pred_*, ce_*) plus `device`, sorted
    by point_id, each point exactly once. Starts a local Ray if none is connected. Raises before any
    work is scheduled when the request cannot run (see `require_resources`).
    """
    features = np.ascontiguousarray(features, np.float32)
    labels, point_ids = np.asarray(labels, np.int64), np.asarray(point_ids, np.int64)
    n = features.shape[0]
    if features.ndim != 2 or labels.shape != (n,) or point_ids.shape != (n,):
        raise ValueError(f"features {features.shape}, labels {labels.shape} and point_ids {point_ids.shape} "
                         "must be (n, d), (n,) and (n,)")
    if np.unique(point_ids).size != n:
        raise ValueError("point_ids must be unique")
    if features.shape[1] != state.weight.shape[1]:
        raise ValueError(f"test features have dimension {features.shape[1]} but the head expects {state.weight.shape[1]}")
    init_ray()
    gpus = require_resources(sharding.gpus_per_actor, sharding.cpus_per_actor, sharding.on_missing_gpu)
    device = None if gpus > 0 else "cpu"  # None: the evaluator takes the GPU Ray assigned, if torch sees one
    state_ref = ray.put(state)  # once; every actor resolves the same object
    blocks = max(1, math.ceil(n / sharding.batch_size))
    ds = ray.data.from_items(
        [{"point_id": int(p), "feature": f, "label": int(y)} for p, f, y in zip(point_ids, features, labels)],
        override_num_blocks=blocks,
    )
    with warnings.catch_warnings():  # Ray 2.60 takes actor restart options only as ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        evaluated = _map_replicas(ds, state_ref, ttt, evaluator_cls, sharding, gpus,
                                  {"majority_k": majority_k, "retriever": retriever, "metric": metric, "device": device,
                                   "engine": engine})
    parts = list(evaluated.iter_batches(batch_size=None, batch_format="numpy"))
    out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    order = np.argsort(out["point_id"], kind="stable")
    out = {name: col[order] for name, col in out.items()}
    if not np.array_equal(out["point_id"], np.sort(point_ids)):
        got, want = out["point_id"], np.sort(point_ids)
        raise RuntimeError(f"sharded evaluation returned {got.size} rows for {want.size} test points "
                           f"({np.setdiff1d(want, got).size} missing, {got.size - np.unique(got).size} duplicated)")
    return out
