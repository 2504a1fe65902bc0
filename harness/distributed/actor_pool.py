"""One way to spread per-point work over a pool of Ray actors: Ray Data `map_batches` with a callable class.

    columns {"point_id": (n,), ...} ──► Ray Dataset (blocks of `batch_size` points)
        │ map_batches(actor class, compute=ActorPoolStrategy(size=actors), max_restarts, max_task_retries)
        ▼
    actor: __init__  ray.get(shared objects) ──► actor_cls(**shared, **kwargs)   (once: models, index replicas)
           __call__  batch (dict of numpy arrays) ──► output columns, "point_id" among them
        ▼
    driver: concatenate, sort by point_id, check every point came back exactly once

Large read-only objects (`shared`: an index, training features) are `ray.put` once and resolved in
each actor's `__init__`, so nothing large travels with a batch. Actors are restartable and their tasks
retried: a batch whose actor died is recomputed by a new actor, which is right when the work of a
point does not depend on what the actor did before (TTT starts every point from the global model).
Inside a Ray Tune trial the actors join the trial's placement group (the bundles the trial reserved
for them), so a sweep never starts more trials than their actors can run on.

Used by the head-TTT sharding (harness.distributed.sharding) and the LM TTT path
(harness.distributed.lm_sharding).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from harness.distributed.runtime import init_ray, require_resources


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """How the points are spread over actors. One actor holds one replica of the shared objects."""

    actors: int = 2
    gpus_per_actor: float = 0.0  # fractions share a GPU between actors
    cpus_per_actor: float = 1.0
    batch_size: int = 256  # points per map_batches call
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
        for name in ("max_restarts", "max_task_retries"):
            if getattr(self, name) < -1:
                raise ValueError(f"ShardingConfig.{name} must be >= -1 (-1: unlimited), got {getattr(self, name)}")
        if self.on_missing_gpu not in ("error", "cpu"):
            raise ValueError(f"ShardingConfig.on_missing_gpu must be 'error' or 'cpu', got {self.on_missing_gpu!r}")


def fit_to_cluster(sharding: ShardingConfig) -> ShardingConfig:
    """Connect to Ray (a local one if none is connected) and check one actor fits on some node.

    Returns `sharding`, with gpus_per_actor = 0 where the cluster has no GPU and on_missing_gpu="cpu".
    Raises naming the field when the request can never be scheduled (see `require_resources`)."""
    init_ray()
    gpus = require_resources(sharding.gpus_per_actor, sharding.cpus_per_actor, sharding.on_missing_gpu)
    return sharding if gpus == sharding.gpus_per_actor else dataclasses.replace(sharding, gpus_per_actor=gpus)


class _PoolActor:
    """The class Ray Data instantiates: resolves the shared objects once, builds the caller's actor."""

    def __init__(self, actor_cls: type, shared_refs: dict[str, ray.ObjectRef], kwargs: dict) -> None:
        with warnings.catch_warnings():  # object-store arrays are read-only; actors only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            shared = {name: ray.get(ref) for name, ref in shared_refs.items()}  # refs in a dict: not auto-resolved
            self.actor = actor_cls(**shared, **kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.actor(batch)


def check_exactly_once(point_ids: np.ndarray, expected: np.ndarray, what: str = "the actor pool") -> None:
    """Raise RuntimeError unless `point_ids` (sorted) is `expected` (sorted): every point once, no other."""
    want = np.sort(np.asarray(expected))
    got = np.asarray(point_ids)
    if np.array_equal(got, want):
        return
    missing = np.setdiff1d(want, got).size
    duplicated = got.size - np.unique(got).size
    unknown = np.setdiff1d(got, want).size
    raise RuntimeError(f"{what} returned {got.size} rows for {want.size} points ({missing} missing, "
                       f"{duplicated} duplicated, {unknown} unknown point ids)")


def _rows(columns: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    def item(v: Any) -> Any:
        return v.item() if isinstance(v, np.generic) else v

    return [{name: item(col[i]) for name, col in columns.items()} for i in range(n)]


def map_actor_pool(columns: Mapping[str, Any], actor_cls: type, sharding: ShardingConfig,
                   shared: Mapping[str, Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                   id_column: str = "point_id") -> dict[str, np.ndarray]:
    """Run `actor_cls` over the points of `columns` on a Ray actor pool; -> its output columns, sorted by
    `id_column`, each point exactly once (else RuntimeError naming the missing / duplicated counts).

    columns: equal-length sequences (n,) or arrays (n, ...), `id_column` holding unique ids.
    actor_cls(**shared, **kwargs) is built once per actor; `actor(batch)` maps a dict of numpy arrays
    (<= sharding.batch_size points) to a dict of arrays with one row per input point, `id_column` kept.
    shared: large read-only objects, each `ray.put` once (an ObjectRef is passed as it is).
    Connects to Ray if needed and checks the request fits before any work (see `fit_to_cluster`).
    """
    ids = np.asarray(columns[id_column])
    n = ids.shape[0]
    if n == 0:
        raise ValueError("map_actor_pool needs at least one point")
    if ids.ndim != 1 or np.unique(ids).size != n:
        raise ValueError(f"{id_column} must be a 1-D column of unique ids")
    bad = {name: len(col) for name, col in columns.items() if len(col) != n}
    if bad:
        raise ValueError(f"columns {bad} do not have the {n} rows of {id_column}")
    sharding = fit_to_cluster(sharding)
    refs = {name: obj if isinstance(obj, ray.ObjectRef) else ray.put(obj) for name, obj in (shared or {}).items()}
    blocks = math.ceil(n / sharding.batch_size)
    ds = ray.data.from_items(_rows(columns, n), override_num_blocks=blocks)
    placement = {}
    pg = ray.util.get_current_placement_group()
    if pg is not None:  # inside a Ray Tune trial: the actors use the bundles the trial reserved for them
        placement["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg, placement_group_capture_child_tasks=True)
    with warnings.catch_warnings():  # Ray 2.60 takes actor restart options only as ray_remote_args
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        mapped = ds.map_batches(
            _PoolActor,
            fn_constructor_args=(actor_cls, refs, dict(kwargs or {})),
            batch_size=sharding.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(sharding.actors, blocks)),  # no actor without a batch
            num_cpus=sharding.cpus_per_actor,
            num_gpus=sharding.gpus_per_actor,
            max_restarts=sharding.max_restarts,
            max_task_retries=sharding.max_task_retries,
            **placement,
        )
    parts = [p for p in mapped.iter_batches(batch_size=None, batch_format="numpy") if len(p.get(id_column, ()))]
    if not parts:
        check_exactly_once(np.array([], ids.dtype), ids)
    out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    order = np.argsort(out[id_column], kind="stable")
    out = {name: col[order] for name, col in out.items()}
    check_exactly_once(out[id_column], ids)
    return out
