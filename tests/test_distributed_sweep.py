"""The sweep pipeline on real Ray Tune: a grid of MNIST trials on a 2-node cluster whose param_space shows
the config's fields, a killed sweep resumed without recomputing finished trials, an Optuna search that
tunes on the validation split only, cached rows reused only for the same config, inputs and code, bad
input not retried while a crash is."""

from __future__ import annotations

import dataclasses
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

from distributed_fixtures import (TINY, SleepyTrial, assert_same_table, calls, ray_cluster,  # noqa: F401
                                  tiny_trial)
from harness.distributed.sweep import SweepConfig, run_trials, search_trials
from harness.errors import ConfigError
from harness.results import provenance
from harness.results.schema import config_hash, git_sha
from harness.trials.mnist import MnistTrialConfig

ROOT = Path(__file__).resolve().parents[1]


def test_grid_sweep_of_mnist_trials_writes_rows_and_reports(ray_cluster, tiny_trial, mnist, tmp_path):
    cfg, in_process = tiny_trial
    trials = [dataclasses.replace(cfg, ttt_k=k) for k in (20, 200)]
    result = run_trials(trials, SweepConfig("grid", str(tmp_path)), shared={"images": mnist})
    assert len(result.grid) == 2 and result.rows.height == 2 * 501  # 5 x 100 points + the dead-features row
    assert len(list((tmp_path / "grid" / "rows").glob("*.parquet"))) == 2  # one file per trial
    # Tune's own tables carry the config's real fields, not an opaque key
    assert sorted(result.trials["config/ttt_k"].to_list()) == [20, 200]
    assert set(result.trials["config/model_size"].to_list()) == {280}
    frame = result.grid.get_dataframe()
    assert {"config/ttt_k", "config/fraction", "config/epochs"} <= set(frame.columns)
    for trial in result.trials.iter_rows(named=True):  # reported metric = mean of that trial's rows
        rows = result.rows.filter((pl.col("k") == trial["config/ttt_k"]) & (pl.col("method") == "ttt")
                                  & (pl.col("metric") == "error"))
        assert rows.height == 100 and trial["ttt_error"] == pytest.approx(rows["value"].mean())
    assert result.rows["k"].unique(maintain_order=True).to_list()[:2] == [None, 20]  # trial order: k 20 first
    # k = 200 is the paper's value for this size, so that trial reproduces the in-process table exactly
    assert_same_table(result.rows.filter(pl.col("config_hash") == in_process["config_hash"][0]), in_process)


def _rows_files(storage: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (storage / "sleepy" / "rows").glob("*.parquet")}


def test_killed_sweep_resumes_without_recomputing_finished_trials(tmp_path):
    storage, log = tmp_path / "sweeps", tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    cmd = [sys.executable, str(ROOT / "tests" / "distributed_fixtures.py"), str(storage), str(log)]
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
    computed = calls(log)
    assert sorted(set(computed)) == list(range(6))
    # each finished trial was computed once; only a trial killed mid-flight may have started twice
    assert all(computed.count(x) == 1 for x in range(len(done_before))), computed
    assert len(computed) <= 6 + 1
    # the killed-and-resumed sweep's table equals an uninterrupted run's, row for row
    whole = tmp_path / "uninterrupted"
    subprocess.run([*cmd[:2], str(whole), str(tmp_path / "calls2.log")], env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=240)
    resumed_table = pl.read_parquet(storage / "table.parquet").drop("wall_time_s", "phase_seconds")
    assert resumed_table.equals(pl.read_parquet(whole / "table.parquet").drop("wall_time_s", "phase_seconds"))


def test_optuna_search_tunes_on_validation_only(ray_cluster, tiny_trial, mnist, tmp_path):
    cfg, _ = tiny_trial
    space = {"ttt_lr": tune.loguniform(1e-3, 1e-1), "ttt_steps": tune.randint(5, 15), "ttt_k": tune.choice([20, 50])}
    fixed = {**{k: v for k, v in TINY.items() if k != "ttt_steps"}, "cache_dir": cfg.cache_dir, "split": "val"}
    result = search_trials(MnistTrialConfig, space, SweepConfig("optuna", str(tmp_path)), fixed=fixed,
                           num_samples=3, max_concurrent=2, seed=0, shared={"images": mnist})
    assert len(result.grid) == 3
    assert result.rows["dataset"].unique().to_list() == ["mnist-val"]
    lrs = result.trials["config/ttt_lr"].to_list()
    assert len(set(lrs)) == 3 and all(1e-3 <= lr <= 1e-1 for lr in lrs)
    best = result.grid.get_best_result()
    assert best.metrics["ttt_error"] == min(result.trials["ttt_error"].to_list())

    with pytest.raises(ConfigError, match="(?s)1 of 1 trials failed on bad input.*tunes on the 'val' split only"):
        search_trials(MnistTrialConfig, space, SweepConfig("optuna_test", str(tmp_path)),
                      fixed={**fixed, "split": "test"}, num_samples=1, shared={"images": mnist})
    with pytest.raises(ConfigError, match=r"unknown MnistTrialConfig fields \['ttt_kk'\]"):
        search_trials(MnistTrialConfig, {"ttt_kk": tune.choice([1])}, SweepConfig("typo", str(tmp_path)))


def test_sweep_config_bad_fields_and_duplicate_trials_fail_before_work(tmp_path):
    with pytest.raises(ConfigError, match="SweepConfig.mode must be 'min' or 'max'"):
        SweepConfig("x", mode="lowest")
    with pytest.raises(ConfigError, match="SweepConfig.name must be a non-empty folder name"):
        SweepConfig("a/b")
    log = tmp_path / "calls.log"
    with pytest.raises(ConfigError, match=r"duplicate trials .*\['x=1'\]"):
        run_trials([SleepyTrial(0, calls_log=str(log)), SleepyTrial(1, calls_log=str(log)),
                    SleepyTrial(1, calls_log=str(log))], SweepConfig("dupes", str(tmp_path)))
    assert not log.exists() and not (tmp_path / "dupes").exists()  # refused before any trial ran


def test_infeasible_trial_resources_fail_before_work(ray_cluster, tmp_path):
    with pytest.raises(ValueError, match=r"cpus_per_trial/gpus_per_trial = \{'CPU': 1.0, 'GPU': 2.0\} fits on no node"):
        run_trials([SleepyTrial(0)], SweepConfig("infeasible", str(tmp_path), gpus_per_trial=2.0))
    assert not (tmp_path / "infeasible").exists()  # nothing started, nothing written


def test_bad_input_is_not_retried_and_a_crash_is(ray_cluster, tmp_path):
    log = tmp_path / "calls.log"
    sweep = SweepConfig("failing", str(tmp_path), max_failures=2)
    with pytest.raises(ConfigError, match="1 of 2 trials failed on bad input") as info:
        run_trials([SleepyTrial(0, calls_log=str(log)), SleepyTrial(1, calls_log=str(log), fail="input")], sweep)
    assert "x = 1 is refused by this trial" in str(info.value) and "resume" not in str(info.value)
    assert sorted(calls(log)) == [0, 1]  # the bad trial ran once, not 1 + max_failures times
    log.unlink()
    result = run_trials([SleepyTrial(2, calls_log=str(log), fail="crash_once")], SweepConfig("crash", str(tmp_path)))
    assert calls(log) == [2, 2] and result.rows["value"].to_list() == [2.0] * 3  # retried, then it succeeded


def test_cached_rows_are_reused_only_with_the_same_inputs_and_code(ray_cluster, tmp_path, capsys):
    log, data = tmp_path / "calls.log", tmp_path / "offset.txt"
    data.write_text("0.5")
    sweep = SweepConfig("cache", str(tmp_path / "sweeps"))
    trials = [SleepyTrial(x, calls_log=str(log), input_file=str(data)) for x in (0, 1)]

    def values() -> list[float]:
        return run_trials(trials, sweep).rows.filter(pl.col("point_id") == 0)["value"].to_list()

    assert values() == [0.5, 1.5] and sorted(calls(log)) == [0, 1]
    assert values() == [0.5, 1.5] and sorted(calls(log)) == [0, 1]  # same config, inputs and code: read back
    assert "2 of 2 trial(s) reuse their cached rows" in capsys.readouterr().out

    data.write_text("0.25")  # the input file edited in place
    assert values() == [0.25, 1.25] and sorted(calls(log)) == [0, 0, 1, 1]
    out = capsys.readouterr().out
    assert "2 trial(s) have stale cached rows, recomputed" in out and f"input files changed: {data}" in out

    meta = sweep.rows_path + f"/{config_hash(dataclasses.asdict(trials[0]))}.meta.json"
    record = json.loads(Path(meta).read_text())
    Path(meta).write_text(json.dumps({**record, "code_version": "0123456789ab"}))  # rows made by other code
    old_rows = Path(sweep.rows_path, f"{config_hash(dataclasses.asdict(trials[0]))}.parquet")
    pl.read_parquet(old_rows).with_columns(git_sha=pl.lit("old-sha")).write_parquet(old_rows)
    reused = run_trials(trials, sweep, reuse_stale=True).rows  # asked to: reused, keeping their own git sha
    assert sorted(calls(log)) == [0, 0, 1, 1] and set(reused["git_sha"]) == {"old-sha", git_sha()}
    assert "reused as asked" in capsys.readouterr().out
    assert values() == [0.25, 1.25] and sorted(calls(log)) == [0, 0, 0, 1, 1]  # not asked: x = 0 recomputed
    out = capsys.readouterr().out
    assert "1 trial(s) have stale cached rows, recomputed:\n  x=0: made by other code (0123456789ab" in out
    assert set(run_trials(trials, sweep).rows["git_sha"]) == {git_sha()}


def test_code_version_follows_every_harness_source_file(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "harness"
    shutil.copytree(provenance.HARNESS_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "HARNESS_ROOT", copy)
    provenance.code_version.cache_clear()
    try:
        before = provenance.code_version()
        with open(copy / "ttt" / "linear.py", "a") as f:
            f.write("\n# an edit\n")
        provenance.code_version.cache_clear()
        assert provenance.code_version() != before
    finally:
        provenance.code_version.cache_clear()


def test_without_an_address_ray_joins_the_cluster_of_this_machine(ray_cluster, tmp_path):
    """As under `ray submit` (no RAY_ADDRESS, no --address): join the cluster `ray start` recorded here."""
    from ray._private.utils import write_ray_address

    temp = tmp_path / "raytmp"  # this test's own Ray temp dir: the machine's real one stays untouched
    (temp / "ray").mkdir(parents=True)
    write_ray_address(ray_cluster.address, str(temp / "ray"))
    code = ("from harness.distributed.runtime import init_ray; import ray; init_ray(); "
            "print('GCS', ray.get_runtime_context().gcs_address)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(temp)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"GCS {ray_cluster.address}" in out.stdout


def test_optuna_search_persists_in_sqlite_that_optuna_and_optuna_dashboard_read(ray_cluster, tmp_path):
    """The search's Optuna study lives in <experiment>/optuna.db: optuna.load_study reads every trial back with
    the parameters and values Tune saw, optuna-dashboard's app lists it, and a new search starts it afresh."""
    import wsgiref.util

    import optuna
    from optuna_dashboard import wsgi

    from harness.distributed.sweep import optuna_url

    sweep = SweepConfig("search", str(tmp_path))
    space = {"x": tune.randint(0, 50)}
    result = search_trials(SleepyTrial, space, sweep, num_samples=4, max_concurrent=1, seed=0)
    url = optuna_url(sweep)
    assert url == f"sqlite:///{tmp_path.resolve()}/search/optuna.db" and (tmp_path / "search" / "optuna.db").exists()
    study = optuna.load_study(study_name="search", storage=url)
    done = sorted((t.params["x"], t.value) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    seen = sorted(zip(result.trials["config/x"].to_list(), result.trials["ttt_error"].to_list(), strict=True))
    assert len(done) == 4 and done == seen and all(float(x) == v for x, v in done)  # SleepyTrial reports x

    environ: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(wsgi(url)(environ, lambda s, h, *a: status.append(s)))
    listed = json.loads(body)["study_summaries"]
    assert status[0].startswith("200") and [s["study_name"] for s in listed] == ["search"]

    search_trials(SleepyTrial, space, sweep, num_samples=2, max_concurrent=1, seed=1)  # a new search, not --resume
    assert len(optuna.load_study(study_name="search", storage=url).trials) == 2


def test_the_report_of_a_running_sweep_reads_only_its_current_runs_rows(ray_cluster, tmp_path):
    """A sweep rerun in the same folder with other trials keeps the earlier run's rows on disk (its cache), but
    the report's view of the running sweep summarises the current run's trials only, reused rows included; a
    resume keeps the run."""
    from dashboards.runs import find_runs

    sweep = SweepConfig("reruns", str(tmp_path / "out" / "sweeps"))
    run_trials([SleepyTrial(0), SleepyTrial(1)], sweep)
    run_trials([SleepyTrial(1), SleepyTrial(5)], sweep)  # 1 reused, 5 new; 0 is of the earlier run only
    assert len(list((tmp_path / "out" / "sweeps" / "reruns" / "rows").glob("*.parquet"))) == 3

    def running_mean() -> tuple[int | None, float]:
        (run,) = find_runs([tmp_path / "out"])
        assert run.running
        (mean,) = run.summary.filter(pl.col("method") == "ttt")["mean"].to_list()
        return run.trials_done, mean

    assert running_mean() == (2, pytest.approx(3.0))  # (1 + 5) / 2; pooling the earlier run gave 2.0
    run_trials([SleepyTrial(1), SleepyTrial(5)], sweep, resume=True)
    assert running_mean() == (2, pytest.approx(3.0))


def test_a_search_tells_the_searcher_the_worst_value_for_a_diverged_trial_and_goes_on(ray_cluster, tmp_path, capsys):
    """A diverged trial (TTT's logits NaN: a learning rate too large) is a point of the space that works badly, not
    bad input: the search goes on, Optuna gets inf for it, and the rows come from the other trials; a grid still
    refuses it as bad input."""
    space = {"x": tune.choice([1, 2, 3, 4])}
    result = search_trials(SleepyTrial, space, SweepConfig("diverging", str(tmp_path)), fixed={"fail": "diverge_odd"},
                           num_samples=6, max_concurrent=2, seed=0)
    xs = result.trials["config/x"].to_list()
    assert any(x % 2 for x in xs) and any(x % 2 == 0 for x in xs), xs  # the seeded sample holds both kinds
    for x, value in zip(xs, result.trials["ttt_error"].to_list(), strict=True):
        assert value == (float("inf") if x % 2 else float(x))
    assert sorted(set(result.rows["value"].to_list())) == sorted({float(x) for x in xs if x % 2 == 0})
    assert "trials diverged; the searcher was given the worst value" in capsys.readouterr().out
    assert result.grid.get_best_result().metrics["ttt_error"] == min(x for x in xs if x % 2 == 0)
    with pytest.raises(ConfigError, match="1 of 1 trials failed on bad input"):
        run_trials([SleepyTrial(3, fail="diverge_odd")], SweepConfig("diverging_grid", str(tmp_path)))
