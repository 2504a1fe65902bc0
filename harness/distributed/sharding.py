"""Head TTT over a Ray actor pool: the test set sharded over evaluator actors, one index replica per actor.

    test points ──► harness.distributed.actor_pool.map_actor_pool(ReplicaEvaluator, shared={"state": HeadState})
    actor i: __init__  its own retriever + head on its device (once), from the one `ray.put` HeadState
             __call__  batch ──► HeadTTTEvaluator(batch) ──► per-point columns + device
    driver:  columns sorted by point_id, every point exactly once

Actors are restartable and their tasks retried (`max_restarts`, `max_task_retries`): a batch whose
actor dies is recomputed, and since TTT starts every point from the global head the retried result is
the same.
"""

from __future__ import annotations

import numpy as np

from harness.distributed.actor_pool import ShardingConfig, fit_to_cluster, map_actor_pool
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator
from harness.ttt.linear import HeadTTTConfig

__all__ = ["ReplicaEvaluator", "ShardingConfig", "evaluate_sharded"]

DEFAULT_SHARDING = ShardingConfig()


class ReplicaEvaluator:
    """The actor class: builds its own evaluator (index replica) from the shared state, tags its device."""

    def __init__(self, state: HeadState, ttt: HeadTTTConfig, evaluator_cls: type, evaluator_kwargs: dict) -> None:
        self.evaluator = evaluator_cls(state, ttt, **evaluator_kwargs)
        self.device = str(self.evaluator.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.evaluator(batch)
        out["device"] = np.full(len(out["point_id"]), self.device)
        return out


def evaluate_sharded(
    state: HeadState,
    ttt: HeadTTTConfig,
    features: np.ndarray,
    labels: np.ndarray,
    point_ids: np.ndarray,
    sharding: ShardingConfig = DEFAULT_SHARDING,
    majority_k: int = 0,
    retriever: str = "faiss",
    metric: str = "l2",
    engine: str = "auto",
    evaluator_cls: type = HeadTTTEvaluator,
) -> dict[str, np.ndarray]:
    """Evaluate test points (features (n, d), labels (n,), unique point_ids (n,)) on a Ray actor pool.

    Returns the evaluator's per-point columns (point_id, label, pred_*, ce_*, engine) plus `device`, sorted
    by point_id, each point exactly once. Starts a local Ray if none is connected. Raises before any
    work is scheduled when the request cannot run (see `fit_to_cluster`), or when point_ids repeat.
    """
    features = np.ascontiguousarray(features, np.float32)
    labels, point_ids = np.asarray(labels, np.int64), np.asarray(point_ids, np.int64)
    n = features.shape[0]
    if features.ndim != 2 or labels.shape != (n,) or point_ids.shape != (n,):
        raise ValueError(f"features {features.shape}, labels {labels.shape} and point_ids {point_ids.shape} "
                         "must be (n, d), (n,) and (n,)")
    if features.shape[1] != state.weight.shape[1]:
        raise ValueError(f"test features have dimension {features.shape[1]} but the head expects "
                         f"{state.weight.shape[1]}")
    sharding = fit_to_cluster(sharding)
    device = None if sharding.gpus_per_actor > 0 else "cpu"  # None: the evaluator takes the GPU Ray assigned
    evaluator_kwargs = {"majority_k": majority_k, "retriever": retriever, "metric": metric, "device": device,
                        "engine": engine}
    return map_actor_pool({"point_id": point_ids, "feature": features, "label": labels}, ReplicaEvaluator, sharding,
                          shared={"state": state},
                          kwargs={"ttt": ttt, "evaluator_cls": evaluator_cls, "evaluator_kwargs": evaluator_kwargs})
