"""Fixtures shared by tests/test_distributed_*.py: a 2-node Ray cluster and a tiny cached S1 trial.

Import them into a test module with `from distributed_fixtures import ray_cluster, tiny_trial`.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from ray import tune

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
    same = [c for c in a.columns if c not in ("wall_time_s", "phase_seconds", "value")]
    for c in same:
        assert a[c].equals(b[c]), f"column {c} differs: {a[c].head(3).to_list()} vs {b[c].head(3).to_list()}"
    is_ce = (a["metric"] == "cross_entropy").to_numpy()
    va, vb = a["value"].to_numpy(), b["value"].to_numpy()
    np.testing.assert_array_equal(va[~is_ce], vb[~is_ce])
    np.testing.assert_allclose(va[is_ce], vb[is_ce], rtol=1e-5, atol=1e-6)


def tiny_config(cache_dir: str, **overrides):
    from harness.trials.mnist import MnistTrialConfig

    return dataclasses.replace(MnistTrialConfig(**TINY, cache_dir=cache_dir), **overrides)


@dataclasses.dataclass(frozen=True)
class SleepyTrial:
    """A cheap trial kind for sweep tests: its rows' values are x (so the reported ttt_error equals x)."""

    x: int
    sleep: float = 0.0
    calls_log: str = ""  # each call appends x here
    fail: str = ""  # "input": raise a ConfigError; "crash_once": crash on the first call of this x;
    # "diverge_odd": raise a DivergedError for an odd x
    input_file: str = ""  # a file the trial reads (its fingerprint keys the cache)

    def input_files(self) -> tuple[str, ...]:
        return (self.input_file,) if self.input_file else ()


def _sleepy(cfg: SleepyTrial) -> "pl.DataFrame":
    import time
    from pathlib import Path

    import numpy as np

    from harness.errors import ConfigError
    from harness.results.schema import RunInfo, point_rows

    calls = Path(cfg.calls_log).read_text().split() if cfg.calls_log and Path(cfg.calls_log).exists() else []
    if cfg.calls_log:
        with open(cfg.calls_log, "a") as f:
            f.write(f"{cfg.x}\n")
    if cfg.fail == "input":
        raise ConfigError(f"x = {cfg.x} is refused by this trial")
    if cfg.fail == "diverge_odd" and cfg.x % 2:
        from harness.errors import DivergedError

        raise DivergedError(f"x = {cfg.x}: TTT diverged")
    if cfg.fail == "crash_once" and str(cfg.x) not in calls:
        raise RuntimeError("a crash (e.g. a lost node)")
    time.sleep(cfg.sleep)
    value = float(cfg.x) + (float(Path(cfg.input_file).read_text()) if cfg.input_file else 0.0)
    return point_rows(RunInfo(study="sweep_test", dataset="synthetic-val", seed=0), "ttt", "error",
                      np.full(3, value), np.arange(3))


def _register() -> None:
    from harness.registry import TRIALS, register_trial

    if "sleepy_test" not in TRIALS:
        register_trial("sleepy_test", SleepyTrial)(_sleepy)


class ResultLog(tune.Callback):
    """A Tune callback for `--callbacks distributed_fixtures:ResultLog`: appends each trial's final result (the
    metrics it reported) as a JSON line to $TTT_TEST_CALLBACK_LOG."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        import json

        result = {k: v for k, v in (trial.last_result or {}).items() if isinstance(v, (int, float, str))}
        with open(os.environ["TTT_TEST_CALLBACK_LOG"], "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ != "__main__":  # run as a script, the module registers itself on `import distributed_fixtures`
    _register()


def calls(log) -> list[int]:
    from pathlib import Path

    return [int(x) for x in Path(log).read_text().split()] if Path(log).exists() else []


def run_sleepy_sweep(storage: str, calls_log: str, resume: bool, xs: int = 6, sleep: float = 1.5) -> None:
    """The sweep the resume test kills and restores (run in a subprocess: see __main__); its rows go to
    <storage>/table.parquet."""
    import json

    import ray

    from harness.distributed.runtime import init_ray
    from harness.distributed.sweep import SweepConfig, run_trials

    init_ray("local", num_cpus=2)
    sweep = SweepConfig("sleepy", storage, max_concurrent=1)
    result = run_trials([SleepyTrial(x, sleep, calls_log) for x in range(xs)], sweep, resume=resume)
    result.rows.write_parquet(f"{storage}/table.parquet")
    print("RESULT " + json.dumps({"trials": len(result.grid), "rows": result.rows.height,
                                  "xs": sorted(result.trials["config/x"].to_list())}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    import sys

    import distributed_fixtures  # the kind must live in an importable module, not __main__

    distributed_fixtures.run_sleepy_sweep(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv)
