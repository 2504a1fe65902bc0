"""The sweep API on real Ray Tune: a grid of MNIST trials on a 2-node cluster, a killed sweep resumed
without recomputing finished trials, and an Optuna search that tunes on the validation split only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from ray import tune

import distributed_fixtures
from distributed_fixtures import TINY, assert_same_table, ray_cluster, tiny_trial  # noqa: F401  (pytest fixtures)
from harness.distributed.sweep import SweepConfig, grid_space, optuna_search, run_sweep
from harness.distributed.trials import mnist_sweep_trial

ROOT = Path(__file__).resolve().parents[1]


def test_grid_sweep_of_mnist_trials_writes_rows_and_reports(ray_cluster, tiny_trial, mnist, tmp_path):
    cfg, in_process = tiny_trial
    fixed = {**TINY, "cache_dir": cfg.cache_dir}
    result = run_sweep(mnist_sweep_trial, grid_space({"ttt_k": [20, 200]}, fixed), SweepConfig("grid", str(tmp_path)),
                       shared={"images": mnist})
    assert len(result.grid) == 2 and result.rows.height == 2 * 500
    assert len(list((tmp_path / "grid" / "rows").glob("*.parquet"))) == 2  # one file per trial
    for trial in result.trials.iter_rows(named=True):  # reported metric = mean of that trial's rows
        rows = result.rows.filter((pl.col("k") == trial["config/ttt_k"]) & (pl.col("method") == "ttt")
                                  & (pl.col("metric") == "error"))
        assert rows.height == 100 and trial["ttt_error"] == pytest.approx(rows["value"].mean())
    # k = 200 is the paper's value for this size, so that trial reproduces the in-process table exactly
    assert_same_table(result.rows.filter(pl.col("config_hash") == in_process["config_hash"][0]), in_process)


def _rows_files(storage: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (storage / "sleepy" / "rows").glob("*.parquet")}


def test_killed_sweep_resumes_without_recomputing_finished_trials(tmp_path):
    storage, calls = tmp_path / "sweeps", tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    cmd = [sys.executable, str(ROOT / "tests" / "distributed_fixtures.py"), str(storage), str(calls)]
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_rows_files(storage)) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-sweep
    first.wait()
    done_before = _rows_files(storage)
    assert 2 <= len(done_before) < 6, f"the sweep should be killed part-way, {len(done_before)} of 6 trials done"
    resumed = subprocess.run([*cmd, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(next(line for line in resumed.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {"trials": 6, "rows": 18, "xs": [0, 1, 2, 3, 4, 5]}
    after = _rows_files(storage)
    assert len(after) == 6
    assert all(after[name] == mtime for name, mtime in done_before.items())  # finished trials untouched
    computed = [int(x) for x in calls.read_text().split()]
    finished_x = len(done_before)
    assert sorted(set(computed)) == list(range(6))
    # each finished trial was computed once; only a trial killed mid-flight may have started twice
    assert all(computed.count(x) == 1 for x in range(finished_x)), computed
    assert len(computed) <= 6 + 1


def test_optuna_search_tunes_on_validation_only(ray_cluster, tiny_trial, mnist, tmp_path):
    cfg, _ = tiny_trial
    space = {"ttt_lr": tune.loguniform(1e-3, 1e-1), "ttt_steps": tune.randint(5, 15), "ttt_k": tune.choice([20, 50])}
    fixed = {**{k: v for k, v in TINY.items() if k != "ttt_steps"}, "cache_dir": cfg.cache_dir, "split": "val"}
    result = optuna_search(mnist_sweep_trial, space, SweepConfig("optuna", str(tmp_path)), fixed=fixed,
                           num_samples=3, max_concurrent=2, seed=0, shared={"images": mnist})
    assert len(result.grid) == 3
    assert result.rows["dataset"].unique().to_list() == ["mnist-val"]
    lrs = result.trials["config/ttt_lr"].to_list()
    assert len(set(lrs)) == 3 and all(1e-3 <= lr <= 1e-1 for lr in lrs)
    best = result.grid.get_best_result()
    assert best.metrics["ttt_error"] == min(result.trials["ttt_error"].to_list())

    with pytest.raises(RuntimeError, match="1 of 1 trials failed"):  # a test-split trial is refused
        optuna_search(mnist_sweep_trial, space, SweepConfig("optuna_test", str(tmp_path), max_failures=0),
                      fixed={**fixed, "split": "test"}, num_samples=1, shared={"images": mnist})


def test_sweep_config_and_grid_name_bad_fields():
    with pytest.raises(ValueError, match="SweepConfig.mode must be 'min' or 'max'"):
        SweepConfig("x", mode="lowest")
    with pytest.raises(ValueError, match="SweepConfig.name must be a non-empty folder name"):
        SweepConfig("a/b")
    with pytest.raises(ValueError, match=r"keys \['seed'\] are both swept and fixed"):
        grid_space({"seed": [0, 1]}, {"seed": 0})
    with pytest.raises(ValueError, match="sweep axis 'k' has no values"):
        grid_space({"k": []})
    with pytest.raises(ValueError, match=r"unknown MNIST trial config keys \['ttt_kk'\]"):
        mnist_sweep_trial({"model_size": 280, "ttt_kk": 3})
    assert distributed_fixtures.TINY["model_size"] == 280


def test_infeasible_trial_resources_fail_before_work(ray_cluster, tmp_path):
    with pytest.raises(ValueError, match=r"SweepConfig.cpus_per_trial/gpus_per_trial = \{'CPU': 1.0, 'GPU': 2.0\} "
                                         r"fits on no node"):
        run_sweep(distributed_fixtures.sleepy_trial, grid_space({"x": [0]}, {"sleep": 0, "calls_log": "unused"}),
                  SweepConfig("infeasible", str(tmp_path), gpus_per_trial=2.0))
    assert not (tmp_path / "infeasible").exists()  # nothing started, nothing written
