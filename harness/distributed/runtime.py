"""Connecting to Ray and checking what the cluster offers before any work starts.

`init_ray(address)` joins a running cluster (RAY_ADDRESS, this machine's cluster, or an address, as under
`ray submit` and `ray job submit`) or starts a local one. `require_resources` turns a request the cluster can never
satisfy (GPUs on a CPU-only cluster, more CPUs per actor than any node has) into an error naming the
field, instead of a job that waits forever for resources.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import ray

REPO_ROOT = Path(__file__).resolve().parents[2]


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> bool:
    """Connect to Ray once per process; True if this call connected (the caller then owns `ray.shutdown()`).

    address None uses Ray's own resolution, as `ray submit` expects: RAY_ADDRESS if set, else the
    cluster this machine belongs to (the one `ray start` recorded here, e.g. a cluster launcher's head
    node), else a new local Ray. "auto" joins this machine's cluster (an error if there is none);
    "local" always starts a new one; "ray://..." or "host:port" joins that one. num_cpus only sizes a
    new local Ray. Workers get this checkout on PYTHONPATH, so `harness` imports without installing it
    (clusters built from cluster.yaml install it on every node anyway).
    """
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = _this_machines_cluster()
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env_vars = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
                # a model or embedder loading in each of many actors draws no progress bar of its own
                "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1")}
    runtime_env = {"env_vars": env_vars}
    extra = {"num_cpus": num_cpus} if num_cpus is not None else {}
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=kwargs.pop("log_to_driver", True),
             **extra, **kwargs)
    return True


def _this_machines_cluster() -> str | None:
    """The address `ray start` recorded on this machine if that cluster answers, else None (a new local Ray).

    Ray itself would wait minutes on a recorded cluster that has died (its record outlives a killed head);
    a cluster that does not answer is named in a warning, then left alone."""
    import socket

    try:
        from ray._private.utils import read_ray_address  # the record `ray start` writes (Ray's own resolution)
    except ImportError:
        return None
    recorded = read_ray_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return recorded
    except (OSError, ValueError):
        print(f"WARNING: the Ray cluster recorded on this machine ({recorded}) does not answer; "
              "starting a local Ray instead (pass --address to join another)", file=sys.stderr)
        return "local"


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Join (or start) Ray for the block (see init_ray); shut it down afterwards only if this block started it."""
    connected_here = init_ray(address)
    try:
        yield
    finally:
        if connected_here:
            ray.shutdown()


def _node_totals() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def cluster_summary() -> dict[str, object]:
    """The connected cluster's alive nodes, their CPUs and GPUs, and the GPU models Ray detected
    ({"nodes": 1, "CPU": 16.0, "GPU": 1.0, "accelerators": ["H200"]}): the run record's device facts."""
    nodes = _node_totals()
    kinds = sorted({k.split(":", 1)[1] for n in nodes for k in n if k.startswith("accelerator_type:")})
    return {"nodes": len(nodes), "CPU": sum(n.get("CPU", 0.0) for n in nodes),
            "GPU": sum(n.get("GPU", 0.0) for n in nodes), "accelerators": kinds}


def cluster_offers_gpus() -> bool:
    """Whether some alive node of the connected cluster has a GPU (or GPU nodes may autoscale in)."""
    if os.environ.get("TTT_HARNESS_GPUS_MAY_AUTOSCALE") == "1":  # set by cluster.yaml on the head
        return True
    return any(n.get("GPU", 0.0) > 0 for n in _node_totals())


def require_resources(gpus_per_actor: float, cpus_per_actor: float, on_missing_gpu: str = "error") -> float:
    """Check one actor of (cpus_per_actor, gpus_per_actor) fits on some node; return the GPUs to ask for.

    On a cluster without GPUs, on_missing_gpu="error" raises naming `gpus_per_actor`; "cpu" prints a
    warning and returns 0.0 (the actors then run on CPU). Autoscaling clusters may have no GPU node
    yet: a node type that offers GPUs counts, so this check only refuses what can never be scheduled.
    """
    if on_missing_gpu not in ("error", "cpu"):
        raise ValueError(f"on_missing_gpu must be 'error' or 'cpu', got {on_missing_gpu!r}")
    if gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor must be >= 0, got {gpus_per_actor}")
    if cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be > 0, got {cpus_per_actor}")
    nodes = _node_totals()
    autoscaling = os.environ.get("TTT_HARNESS_GPUS_MAY_AUTOSCALE") == "1"  # set by cluster.yaml on the head
    if gpus_per_actor > 0 and not autoscaling:
        most = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        if most < gpus_per_actor:
            msg = (f"gpus_per_actor = {gpus_per_actor} but no node of this Ray cluster has that many GPUs "
                   f"(largest: {most:g}); use gpus_per_actor=0 for CPU actors")
            if on_missing_gpu == "error":
                raise ValueError(msg)
            print(f"WARNING: {msg}; falling back to CPU actors", file=sys.stderr)
            gpus_per_actor = 0.0
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if cpus_per_actor > most_cpus:
        raise ValueError(f"cpus_per_actor = {cpus_per_actor} but the largest node of this Ray cluster has "
                         f"{most_cpus:g} CPUs")
    return gpus_per_actor


def require_bundle(bundle: dict[str, float], what: str) -> None:
    """Raise naming `what` if no alive node offers every resource of `bundle` ({"CPU": 1, "GPU": 0.5, ...}):
    Ray would otherwise wait forever for an infeasible request. GPUs pass on autoscaling clusters
    (TTT_HARNESS_GPUS_MAY_AUTOSCALE=1)."""
    nodes = _node_totals()
    wanted = {k: v for k, v in bundle.items() if v > 0}
    if os.environ.get("TTT_HARNESS_GPUS_MAY_AUTOSCALE") == "1":
        wanted.pop("GPU", None)
    if wanted and not any(all(n.get(k, 0.0) >= v for k, v in wanted.items()) for n in nodes):
        offered = [{k: n.get(k, 0.0) for k in wanted} for n in nodes]
        raise ValueError(f"{what} = {wanted} fits on no node of this Ray cluster (nodes offer {offered})")
