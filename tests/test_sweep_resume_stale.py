"""--resume and cached rows on real Ray Tune and Optuna: a restored search refuses finished trials whose rows
are stale (naming each trial and why) unless asked to keep them; a grid retries a trial that failed on bad input
once the input is fixed, and a search says how to; rows of unfinished trials (no .meta.json, or stale) are
recomputed, not refused; rows of a trial that leaves its device open are stale on another device."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from distributed_fixtures import SleepyTrial, calls, ray_cluster  # noqa: F401
from ray import tune

from harness.distributed.sweep import SweepConfig, run_trials, search_trials
from harness.errors import ConfigError
from harness.results.schema import config_hash

pytestmark = pytest.mark.usefixtures("ray_cluster")  # every test runs sweeps on the 2-node Ray cluster


@dataclasses.dataclass(frozen=True)
class DeviceTrial:
    """A cheap trial kind whose config may leave its device open (None: cuda where torch sees a GPU)."""

    x: int
    device: str | None = None
    calls_log: str = ""  # each call appends x here


def _device_trial(cfg: DeviceTrial) -> pl.DataFrame:
    import numpy as np

    from harness.results.schema import RunInfo, point_rows

    with open(cfg.calls_log, "a") as f:
        f.write(f"{cfg.x}\n")
    return point_rows(RunInfo(study="sweep_test", dataset="synthetic-val", seed=0), "ttt", "error",
                      np.full(3, float(cfg.x)), np.arange(3))


def _register() -> None:
    from harness.registry import TRIALS, register_trial

    if "device_test" not in TRIALS:
        register_trial("device_test", DeviceTrial)(_device_trial)


_register()  # here and in each Ray worker that unpickles the kind


def _meta(sweep: SweepConfig, config: dict) -> Path:
    return Path(sweep.rows_path) / f"{config_hash(config)}.meta.json"


def _values(rows: pl.DataFrame) -> list[float]:
    return sorted(rows.filter(pl.col("point_id") == 0)["value"].to_list())


def test_search_resume_refuses_finished_trials_with_stale_rows(tmp_path, capsys):
    data, log = tmp_path / "offset.txt", tmp_path / "calls.log"
    data.write_text("0.5")
    sweep = SweepConfig("search", str(tmp_path / "sweeps"))
    space = {"x": tune.randint(0, 100)}
    kw = dict(fixed={"input_file": str(data), "calls_log": str(log)}, num_samples=2, max_concurrent=1, seed=0)
    first = search_trials(SleepyTrial, space, sweep, **kw)
    xs = calls(log)
    assert len(set(xs)) == 2 and _values(first.rows) == [x + 0.5 for x in sorted(xs)]

    data.write_text("0.25")  # the input edited: both finished trials' rows (and what TPE learnt) are stale
    with pytest.raises(ConfigError, match=r"--resume: 2 finished trial\(s\) of the sweep at .* other inputs") as info:
        search_trials(SleepyTrial, space, sweep, resume=True, **kw)
    for x in xs:
        assert f"x={x}: input files changed: {data}" in str(info.value)
    assert "without --resume to start the search afresh" in str(info.value) and calls(log) == xs

    data.write_text("0.5")  # the input back as it was; one trial's rows made by other code
    meta = _meta(sweep, {"x": xs[0], **kw["fixed"]})
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "code_version": "0123456789ab"}))
    with pytest.raises(ConfigError, match=r"--resume: 1 finished trial") as info:
        search_trials(SleepyTrial, space, sweep, resume=True, **kw)
    assert f"x={xs[0]}: made by other code (0123456789ab" in str(info.value) and f"x={xs[1]}" not in str(info.value)
    capsys.readouterr()
    kept = search_trials(SleepyTrial, space, sweep, resume=True, reuse_stale=True, **kw)  # kept, as asked
    assert _values(kept.rows) == _values(first.rows) and calls(log) == xs
    assert "1 finished trial(s) have stale cached rows, reused as asked" in capsys.readouterr().out


def test_resume_retries_trials_that_failed_on_bad_input_once_it_is_fixed(tmp_path, capsys):
    data, log = tmp_path / "offset.txt", tmp_path / "calls.log"  # data missing: FileNotFoundError, bad input
    sweep = SweepConfig("bad_input", str(tmp_path / "sweeps"))
    trials = [SleepyTrial(0, calls_log=str(log)), SleepyTrial(1, calls_log=str(log), input_file=str(data))]
    with pytest.raises(ConfigError, match="1 of 2 trials failed on bad input"):
        run_trials(trials, sweep)
    assert sorted(calls(log)) == [0, 1]
    data.write_text("0.5")  # the input fixed
    capsys.readouterr()
    result = run_trials(trials, sweep, resume=True)
    assert _values(result.rows) == [0.0, 1.5] and sorted(calls(log)) == [0, 1, 1]  # retried; x = 0 read back
    assert "1 trial(s) of the sweep failed on bad input; running it afresh" in capsys.readouterr().out

    # a search cannot retry a trial its Optuna study has recorded: it says how to recover, before any work
    data.unlink()
    search = SweepConfig("bad_search", str(tmp_path / "sweeps"))
    kw = dict(fixed={"input_file": str(data), "calls_log": str(log)}, num_samples=1, max_concurrent=1, seed=0)
    with pytest.raises(ConfigError, match="1 of 1 trials failed on bad input"):
        search_trials(SleepyTrial, {"x": tune.randint(0, 100)}, search, **kw)
    data.write_text("0.5")
    before = calls(log)
    with pytest.raises(ConfigError, match=r"(?s)--resume: 1 trial\(s\) of the search .* failed on bad input:\n"
                                          r"  the trial: FileNotFoundError.*fix the input, then run without --resume"):
        search_trials(SleepyTrial, {"x": tune.randint(0, 100)}, search, resume=True, **kw)
    assert calls(log) == before


def test_resume_recomputes_rows_of_unfinished_trials_and_refuses_stale_finished_ones(tmp_path, capsys):
    log = tmp_path / "calls.log"
    log.write_text("0\n")  # x = 0 has "crashed once" already: it finishes, x = 1 and 2 crash (no retries)
    sweep = SweepConfig("half", str(tmp_path / "sweeps"), max_failures=0)
    trials = [SleepyTrial(x, calls_log=str(log), fail="crash_once") for x in (0, 1, 2)]
    with pytest.raises(RuntimeError, match="2 of 3 trials crashed"):
        run_trials(trials, sweep)
    rows = Path(sweep.rows_path)
    keys = [config_hash(dataclasses.asdict(t)) for t in trials]
    shutil.copy(rows / f"{keys[0]}.parquet", rows / f"{keys[1]}.parquet")  # x = 1 killed between its two writes
    shutil.copy(rows / f"{keys[0]}.parquet", rows / f"{keys[2]}.parquet")  # x = 2: stale rows, not finished
    record = json.loads((rows / f"{keys[0]}.meta.json").read_text())
    other_code = {**record, "code_version": "0123456789ab"}
    (rows / f"{keys[2]}.meta.json").write_text(json.dumps(other_code))

    (rows / f"{keys[0]}.meta.json").write_text(json.dumps(other_code))  # the finished trial's rows: other code
    with pytest.raises(ConfigError, match=r"--resume: 1 finished trial") as info:  # Tune would hand them back
        run_trials(trials, sweep, resume=True)
    assert "x=0: made by other code (0123456789ab" in str(info.value)
    assert "x=1" not in str(info.value) and "x=2" not in str(info.value)

    (rows / f"{keys[0]}.meta.json").write_text(json.dumps(record))
    capsys.readouterr()
    result = run_trials(trials, sweep, resume=True)  # the restore runs x = 1 and 2 again: recomputed
    assert _values(result.rows) == [0.0, 1.0, 2.0] and sorted(calls(log)) == [0, 0, 1, 1, 2, 2]
    out = capsys.readouterr().out
    assert ("2 trial(s) have stale cached rows, recomputed:\n  x=1: no provenance record\n"
            "  x=2: made by other code (0123456789ab") in out
    assert json.loads((rows / f"{keys[2]}.meta.json").read_text())["code_version"] != "0123456789ab"  # recomputed


def test_rows_of_a_trial_leaving_its_device_open_are_stale_on_another_device(tmp_path, capsys):
    log = tmp_path / "calls.log"
    sweep = SweepConfig("device", str(tmp_path / "sweeps"))
    trials = [DeviceTrial(0, calls_log=str(log)), DeviceTrial(1, device="cpu", calls_log=str(log))]
    run_trials(trials, sweep)
    open_meta, pinned_meta = (_meta(sweep, dataclasses.asdict(t)) for t in trials)
    record = json.loads(open_meta.read_text())
    here = record["device"]  # resolved in the trial's worker (this test cluster's GPUs are fake: cpu)
    assert here in ("cpu", "cuda") and "device" not in json.loads(pinned_meta.read_text())  # pinned: in the hash
    other = "cuda" if here == "cpu" else "cpu"
    open_meta.write_text(json.dumps({**record, "device": other}))  # as if made on a node of the other kind
    capsys.readouterr()
    result = run_trials(trials, sweep)
    out = capsys.readouterr().out
    assert f"2 of 2 trial(s) reuse their cached rows (same config, inputs and code; made on {other}" in out
    assert f"1 trial(s) found cached rows made on another device:\n  the trial: made on {other}, this trial " \
           f"computes on {here}, recomputed" in out
    assert sorted(calls(log)) == [0, 0, 1] and _values(result.rows) == [0.0, 1.0]  # x = 1 (pinned) read back
    assert json.loads(open_meta.read_text())["device"] == here
