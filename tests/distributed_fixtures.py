"""Fixtures shared by tests/test_distributed_*.py: a 2-node Ray cluster and a tiny cached S1 trial.

Import them into a test module with `from distributed_fixtures import ray_cluster, tiny_trial`.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"

# Tiny S1 cell: LeNet 280 trained 1 epoch on 10% of train, 100 test points, 10 TTT steps.
TINY = dict(model_size=280, epochs=1, fraction=0.1, test_points=100, ttt_steps=10)


@pytest.fixture(scope="session")
def ray_cluster():
    """A ray.cluster_utils.Cluster of two nodes (1 CPU + 1 fake GPU each), connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    from harness.distributed.runtime import init_ray

    if ray.is_initialized():  # a study run earlier in this session left its local Ray connected
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    init_ray(cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def tiny_trial(tmp_path_factory, mnist):
    """(config with a warm feature cache, the in-process rows of mnist_trial for it)."""
    from harness.trials.mnist import MnistTrialConfig, mnist_trial

    cfg = MnistTrialConfig(**TINY, cache_dir=str(tmp_path_factory.mktemp("features")))
    return cfg, mnist_trial(cfg, mnist)


KEYS = ["method", "metric", "point_id"]


def assert_same_table(a, b) -> None:
    """Equal row for row except wall time; cross-entropies may differ in the last float32 bits
    (the global logits' GEMM blocks differently for other batch sizes and thread counts), errors exactly equal."""
    import numpy as np

    a, b = a.sort(KEYS), b.sort(KEYS)
    assert a.height == b.height
    same = [c for c in a.columns if c not in ("wall_time_s", "value")]
    for c in same:
        assert a[c].equals(b[c]), f"column {c} differs: {a[c].head(3).to_list()} vs {b[c].head(3).to_list()}"
    is_ce = (a["metric"] == "cross_entropy").to_numpy()
    va, vb = a["value"].to_numpy(), b["value"].to_numpy()
    np.testing.assert_array_equal(va[~is_ce], vb[~is_ce])
    np.testing.assert_allclose(va[is_ce], vb[is_ce], rtol=1e-5, atol=1e-6)


def tiny_config(cache_dir: str, **overrides):
    from harness.trials.mnist import MnistTrialConfig

    return dataclasses.replace(MnistTrialConfig(**TINY, cache_dir=cache_dir), **overrides)


def sleepy_trial(config: dict) -> "pl.DataFrame":
    """A cheap pure trial for sweep tests: logs each call to config["calls_log"], sleeps, returns 3 rows
    whose values are config["x"] (so the reported ttt_error equals x)."""
    import time

    import numpy as np

    from harness.results.schema import RunInfo, point_rows

    with open(config["calls_log"], "a") as f:
        f.write(f"{config['x']}\n")
    time.sleep(config["sleep"])
    return point_rows(RunInfo(study="sweep_test", dataset="synthetic-val", seed=0), "ttt", "error",
                      np.full(3, float(config["x"])), np.arange(3))


def run_sleepy_sweep(storage: str, calls_log: str, resume: bool, xs: int = 6, sleep: float = 1.5) -> None:
    """The sweep the resume test kills and restores (run in a subprocess: see __main__)."""
    import json

    import ray

    from harness.distributed.sweep import SweepConfig, grid_space, run_sweep

    sweep = SweepConfig("sleepy", storage, max_concurrent=1, verbose=0)
    result = run_sweep(sleepy_trial, grid_space({"x": list(range(xs))}, {"sleep": sleep, "calls_log": calls_log}),
                       sweep, resume=resume)
    print("RESULT " + json.dumps({"trials": len(result.grid), "rows": result.rows.height,
                                  "xs": sorted(result.trials["config/x"].to_list())}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    import sys

    run_sleepy_sweep(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv)
