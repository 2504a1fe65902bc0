"""One sweep API on Ray Tune for every study: grids and Optuna searches of pure trial functions.

A trial function is pure: `trial_fn(config: dict, **shared) -> pl.DataFrame` of result rows (the
shared row schema). `shared` holds large read-only inputs (e.g. the MNIST arrays), put in the object
store once by `tune.with_parameters`. Each trial

    rows = trial_fn(config)  ──►  <storage_path>/<name>/rows/<config hash>.parquet   (atomic write)
    summarise(rows)          ──►  tune.report({"ttt_error": ..., "global_error": ..., ...})

and a trial whose Parquet file exists is not recomputed (its rows are read back and reported), so
a sweep started again, or restored with `resume=True` (`Tuner.restore`, which also keeps Optuna's
state and retries errored trials), computes only what is missing. `run_sweep` returns every trial's
rows as one Polars frame plus one row per trial of config and reported metrics.

Grids: `grid_space({"model_size": [...], "seed": [...]}, fixed={...})`.
Searches: `optuna_search(...)` — OptunaSearch under a ConcurrencyLimiter, refusing rows that are not
from the validation split, so hyperparameters are never tuned on test.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs
from ray import tune

from harness.distributed.runtime import init_ray, require_bundle
from harness.results.schema import config_hash

TrialFn = Callable[..., pl.DataFrame]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Where a sweep lives and what each trial may use. `storage_path`: a local or shared folder, or a
    bucket URI (s3://..., gs://...) for multi-node clusters without a shared file system."""

    name: str
    storage_path: str = "results/sweeps"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many trials as resources allow
    max_failures: int = 1  # a crashed trial is retried this many times (-1: forever)
    metric: str = "ttt_error"  # reported by every trial; the searcher optimises it
    mode: str = "min"
    verbose: int = 1  # Ray Tune's progress output: 0 silent, 1 status table, 2 + trial results
    # Resources of the actors a trial starts itself (Ray Data shards: one {"CPU": c, "GPU": g} per actor).
    # They join the trial's placement group, which Ray Tune makes the actors' home (child tasks are
    # captured), so a sweep never starts more trials than their shards can run on.
    child_bundles: tuple[dict[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"SweepConfig.name must be a non-empty folder name without '/', got {self.name!r}")
        if self.cpus_per_trial + self.gpus_per_trial == 0 and not self.child_bundles:
            raise ValueError("SweepConfig.cpus_per_trial and gpus_per_trial are both 0 and there are no child_bundles: "
                             "a trial must reserve something")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            raise ValueError(f"SweepConfig.cpus_per_trial and gpus_per_trial must be >= 0, got "
                             f"{self.cpus_per_trial} and {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"SweepConfig.max_concurrent must be >= 1 or None, got {self.max_concurrent}")
        if self.max_failures < -1:
            raise ValueError(f"SweepConfig.max_failures must be >= -1, got {self.max_failures}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"SweepConfig.mode must be 'min' or 'max', got {self.mode!r}")

    @property
    def storage_uri(self) -> str:
        """Absolute path or URI (Ray Tune needs one)."""
        return self.storage_path if "://" in self.storage_path else str(Path(self.storage_path).expanduser().resolve())

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_uri.rstrip('/')}/{self.name}"

    @property
    def rows_path(self) -> str:
        return f"{self.experiment_path}/rows"


@dataclasses.dataclass(frozen=True)
class SweepResult:
    rows: pl.DataFrame  # every trial's rows, concatenated
    trials: pl.DataFrame  # one row per trial: config/* columns and the reported metrics
    grid: tune.ResultGrid
    path: str  # the experiment folder (pass to resume)


def grid_space(axes: Mapping[str, Sequence], fixed: Mapping[str, Any] | None = None) -> dict:
    """Tune param_space: the cross product of `axes` (each a grid_search), plus constant `fixed` keys."""
    overlap = set(axes) & set(fixed or {})
    if overlap:
        raise ValueError(f"keys {sorted(overlap)} are both swept and fixed")
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"sweep axis {name!r} has no values")
    return {**(fixed or {}), **{name: tune.grid_search(list(values)) for name, values in axes.items()}}


def summarise_rows(rows: pl.DataFrame) -> dict[str, float]:
    """Mean value per (method, metric): {"ttt_error": 0.031, "global_cross_entropy": 0.12, ...}."""
    means = rows.group_by("method", "metric").agg(pl.col("value").mean())
    return {f"{m}_{k}": float(v) for m, k, v in means.iter_rows()}


# --- per-trial Parquet on a local folder or a bucket (pyarrow file systems) ------------------------

def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def _exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def _write_rows(rows: pl.DataFrame, uri: str) -> None:
    """Write to a temporary name beside the target, then move: readers never see half a file."""
    fs, path = _fs(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        rows.write_parquet(f)
    fs.move(tmp, path)


def _read_rows(uri: str) -> pl.DataFrame:
    fs, path = _fs(uri)
    with fs.open_input_file(path) as f:
        return pl.read_parquet(f)


def trial_rows_uri(rows_path: str, config: Mapping[str, Any]) -> str:
    """Where one trial's rows live: keyed by the hash of its whole config."""
    return f"{rows_path}/{config_hash(dict(config))}.parquet"


def _run_trial(config: dict, *, trial_fn: TrialFn, rows_path: str, summarise: Callable, require_split: str | None,
               **shared) -> None:
    """The Tune trainable: compute (or read back) one trial's rows, write them, report the summary."""
    uri = trial_rows_uri(rows_path, config)
    if _exists(uri):
        rows = _read_rows(uri)
    else:
        rows = trial_fn(dict(config), **shared)
        if require_split is not None:
            bad = sorted(d for d in rows["dataset"].unique().to_list() if not d.endswith(f"-{require_split}"))
            if bad:
                raise ValueError(f"this search tunes on the {require_split!r} split only, but the trial produced "
                                 f"rows of datasets {bad}; set the trial's split to {require_split!r}")
        _write_rows(rows, uri)
    tune.report({**summarise(rows), "rows_uri": uri, "n_rows": rows.height})


def run_sweep(
    trial_fn: TrialFn,
    param_space: dict,
    sweep: SweepConfig,
    *,
    resume: bool = False,
    shared: Mapping[str, Any] | None = None,
    search_alg: Any = None,
    num_samples: int = 1,
    summarise: Callable[[pl.DataFrame], dict[str, float]] = summarise_rows,
    require_split: str | None = None,
    address: str | None = None,
) -> SweepResult:
    """Run (or with resume=True, restore and finish) the sweep; return all rows and per-trial metrics.

    Raises RuntimeError naming the failed trials if any still failed after `sweep.max_failures`
    retries; the finished trials' Parquet files stay, and a resumed sweep skips them.
    """
    init_ray(address)
    head = {"CPU": sweep.cpus_per_trial, "GPU": sweep.gpus_per_trial}
    for i, bundle in enumerate([head, *sweep.child_bundles]):  # refuse infeasible trials before any work
        require_bundle(bundle, "SweepConfig.cpus_per_trial/gpus_per_trial" if i == 0 else f"SweepConfig.child_bundles[{i - 1}]")
    trainable = tune.with_parameters(
        _run_trial, trial_fn=trial_fn, rows_path=sweep.rows_path, summarise=summarise, require_split=require_split,
        **dict(shared or {}),
    )
    trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([head, *sweep.child_bundles]))
    if resume and tune.Tuner.can_restore(sweep.experiment_path):
        tuner = tune.Tuner.restore(sweep.experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        if resume:
            print(f"no sweep to resume at {sweep.experiment_path}; starting it (finished trials' rows are reused)")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=sweep.metric, mode=sweep.mode, search_alg=search_alg, num_samples=num_samples,
                max_concurrent_trials=sweep.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=sweep.storage_uri, verbose=sweep.verbose,
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            ),
        )
    grid = tuner.fit()
    failed = [(r.path, r.error) for r in grid if r.error is not None]
    if failed:
        lines = "\n".join(f"  {path}: {type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}"
                          for path, err in failed)
        raise RuntimeError(f"{len(failed)} of {len(grid)} trials failed (rerun with resume to retry them):\n{lines}")
    per_trial = []
    frames = []
    for r in grid:
        frames.append(_read_rows(r.metrics["rows_uri"]))
        per_trial.append({**{f"config/{k}": v for k, v in r.config.items()},
                          **{k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str)) and k != "config"}})
    return SweepResult(pl.concat(frames, how="diagonal_relaxed"), pl.DataFrame(per_trial), grid,
                       sweep.experiment_path)


def optuna_search(
    trial_fn: TrialFn,
    search_space: Mapping[str, Any],
    sweep: SweepConfig,
    *,
    fixed: Mapping[str, Any] | None = None,
    num_samples: int = 20,
    max_concurrent: int = 2,
    seed: int = 0,
    resume: bool = False,
    shared: Mapping[str, Any] | None = None,
    require_split: str = "val",
    address: str | None = None,
) -> SweepResult:
    """Tune hyperparameters with OptunaSearch (TPE, seeded) under a ConcurrencyLimiter.

    search_space: Tune domains, e.g. {"ttt_lr": tune.loguniform(1e-4, 1e-1), "ttt_steps": tune.randint(10, 300),
    "ttt_k": tune.choice([10, 50, 100, 200])}; fixed: constant config keys. Every trial's rows must come
    from a dataset named "*-<require_split>" (validation), never test. Best: `result.grid.get_best_result()`.
    """
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    overlap = set(search_space) & set(fixed or {})
    if overlap:
        raise ValueError(f"keys {sorted(overlap)} are both searched and fixed")
    searcher = ConcurrencyLimiter(OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=seed),
                                  max_concurrent=max_concurrent)
    return run_sweep(trial_fn, {**(fixed or {}), **search_space}, sweep, resume=resume, shared=shared,
                     search_alg=searcher, num_samples=num_samples, require_split=require_split, address=address)
