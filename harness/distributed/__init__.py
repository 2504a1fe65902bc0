"""Distributed execution on Ray: one Ray Data actor pool (map_actor_pool) through which test sets are
sharded over evaluator actors (head TTT: sharding; LoRA TTT of an LM: lm_sharding), each actor with its own
index replica, and one Ray Tune sweep API (grids, Optuna searches, resume) used by every study."""

from harness.distributed.actor_pool import ShardingConfig, map_actor_pool
from harness.distributed.runtime import init_ray, require_resources
from harness.distributed.sharding import ReplicaEvaluator, evaluate_sharded

__all__ = ["ReplicaEvaluator", "ShardingConfig", "evaluate_sharded", "init_ray", "map_actor_pool", "require_resources"]
