"""A study run's metadata beside its tables: `<out-dir>/run.json`.

The rows carry what identifies each trial (config hash, git sha, device, wall time); `run.json` says what
the rows cannot: how the run was asked for and when it ran. Two writers fill it, each with what it knows:

- `harness.distributed.study.run_study` (per sweep): the study's options and their hash, the preset the
  command line started from (`--paper`, `--smoke-test` or the embedded default) and the options given beside
  it, start / end time, wall time, the Ray cluster's resources, the trials and how many reused cached rows;
- `dashboards.outputs.finish_study` (per study): when the tables were written, the data's stand-in note
  (None: the data are the paper's kind), and from the rows: datasets, devices, git shas, trial compute time.

    {"preset": "smoke_test", "options_given": ["--sizes", "280"],
     "options": {...}, "config_hash": "1f0c...", "git_sha": "569612fe7484",
     "sweeps": {"model_scaling": {"started": "2026-...", "wall_time_s": 31.2, "trials": 2, "reused": 0,
                                  "config_hashes": [...], "cluster": {"nodes": 1, "CPU": 2.0, "GPU": 0.0}}},
     "finished": "2026-...", "stand_in": null, "datasets": ["mnist-test"], "devices": ["cpu"], ...}

A record belongs to the rows it describes: `finish_study` keeps the sweeps' part only where their trials'
config hashes are among the rows' (a run.json left by another run in the same folder is not carried over).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from harness.results.atomic import atomic_path

RUN_FILE = "run.json"


def now_iso(timestamp: float | None = None) -> str:
    """The local time (now, or a time.time() stamp) with its UTC offset, to the second (2026-12-04T21:41:20+00:00)."""
    moment = datetime.datetime.now() if timestamp is None else datetime.datetime.fromtimestamp(timestamp)
    return moment.astimezone().isoformat(timespec="seconds")


def study_config_hash(options: dict[str, Any], ray_field: str | None) -> str:
    """The hash of what a study computes: its options without the output folder and the Ray options (where and
    with which resources it ran), so one configuration run into two folders, or on two clusters, hashes alike."""
    from harness.results.schema import config_hash

    return config_hash({k: v for k, v in options.items() if k not in ("out_dir", ray_field)})


def read_run(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`<out_dir>/run.json`, or None when there is none (outputs written before run records existed)."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON run record ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: a run record is a JSON object, got {type(record).__name__}")
    return record


def write_run(out_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` as `<out_dir>/run.json` atomically."""
    path = Path(out_dir) / RUN_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def merge_sweep(previous: dict[str, Any] | None, study: dict[str, Any], name: str,
                sweep: dict[str, Any]) -> dict[str, Any]:
    """The record after sweep `name` of a study with top-level fields `study` (options, config hash, preset, ...):
    the previous record's other sweeps are kept only when it was made with the same study options (S6 runs two
    sweeps into one folder); a record of other options is replaced."""
    same = previous is not None and previous.get("config_hash") == study.get("config_hash")
    sweeps = dict(previous.get("sweeps", {})) if same and previous is not None else {}
    sweeps[name] = sweep
    return {**study, "sweeps": sweeps}


def rows_facts(rows: pl.DataFrame) -> dict[str, Any]:
    """What the rows say about their run: studies, datasets, devices, git shas, trial config hashes, and the
    trials' compute time (each trial's wall_time_s once)."""
    def values(col: str) -> list:
        return sorted(v for v in rows[col].unique().to_list() if v is not None) if col in rows.columns else []

    trial_time = None
    if {"config_hash", "wall_time_s"} <= set(rows.columns):
        per_trial = rows.group_by("config_hash").agg(pl.col("wall_time_s").first())["wall_time_s"].drop_nulls()
        trial_time = float(per_trial.sum()) if per_trial.len() else None
    return {"studies": values("study"), "datasets": values("dataset"), "devices": values("device"),
            "git_shas": values("git_sha"), "trial_config_hashes": values("config_hash"),
            "trial_wall_time_s": trial_time, "rows": rows.height}


def finished_record(previous: dict[str, Any] | None, rows: pl.DataFrame, stand_in: str | None) -> dict[str, Any]:
    """The record `finish_study` writes: the sweeps' record when it describes these rows, plus the rows' facts."""
    facts = rows_facts(rows)
    record: dict[str, Any] = {}
    if previous is not None:
        ours = set(facts["trial_config_hashes"])
        sweeps = {name: s for name, s in previous.get("sweeps", {}).items() if ours & set(s.get("config_hashes", []))}
        if sweeps:
            record = {**previous, "sweeps": sweeps}
    if not record:
        record = {"preset": None, "note": "no sweep record for these rows (run_study did not write one here)"}
    return {**record, **facts, "finished": now_iso(), "stand_in": stand_in}
