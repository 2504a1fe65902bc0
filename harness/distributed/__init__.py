"""Distributed execution on Ray: Ray Data sharding of test sets over evaluator actors (each with its
own index replica) and one Ray Tune sweep API (grids, Optuna searches, resume) used by every study."""

from harness.distributed.runtime import init_ray, require_resources
from harness.distributed.sharding import ReplicaEvaluator, ShardingConfig, evaluate_sharded

__all__ = ["ReplicaEvaluator", "ShardingConfig", "evaluate_sharded", "init_ray", "require_resources"]
