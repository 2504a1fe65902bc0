"""The one path from a study's trials to its rows: Ray Tune grids and Optuna searches of typed trials.

A trial is a frozen config dataclass of a registered kind (`harness.registry`); its rows come from
the kind's pure function `run(cfg, **shared)`. Ray Tune's `param_space` carries the config's real fields
(model_size, k, fraction, experts, ...), so ResultGrid, `progress.csv` and TensorBoard HParams show them:

    run_trials([cfg, ...], sweep)       # a grid: every config once (BasicVariantGenerator points)
    search_trials(Config, space, sweep)  # an Optuna (TPE) search over `space`, fixed fields beside it

Each trial, inside its Ray Tune worker:

    cached rows of <rows_path>/<config hash>.parquet with the same inputs and code?  ──► read them back
    otherwise rows = run(cfg, **shared)  ──►  <config hash>.parquet + <config hash>.meta.json (atomic)
    tune.report({"ttt_error": ..., "global_error": ..., ...})     (the means of every method x metric)

`.meta.json` holds the fingerprint of every input file the config names (`input_files()`), the code
version (`harness.results.provenance`) and, for a config whose `device` is None, the device type the trial
resolved where it ran (`compute_device`: only the trial's worker knows it). Rows made from other inputs, by
other code or on another device are *stale*: the run names them and recomputes them (`reuse_stale=True`
reads them back instead; their rows keep the git sha they were made with). A trial failing on bad input
(`harness.errors.INPUT_ERRORS`) ends without a retry and the run raises a ConfigError naming it; a crash
is retried `max_failures` times.

Each run of a sweep has an id (`<experiment path>/current.json`; a resume keeps it), and every trial of it, computed
or reused, leaves `<experiment path>/runs/<id>/<config hash>.json` when its rows are ready: the rows folder also
holds the rows of earlier runs with other options, and the report's view of a running sweep reads only these.

`resume=True` restores the sweep: unfinished and crashed trials run again, finished ones come back as they
ended. So before restoring, the finished trials are checked: stale rows refuse the resume (unless
`reuse_stale`); trials that failed on bad input are retried (a grid runs afresh, reusing every valid cached
row; a search, whose Optuna study holds them, refuses and says how to start it afresh).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs
from ray import tune

from harness.errors import INPUT_ERRORS, ConfigError, DivergedError
from harness.registry import TRIALS, TrialKind, input_files, trial_kind
from harness.results.provenance import changed_inputs, code_version, input_fingerprint
from harness.results.schema import config_hash

Summarise = Callable[[pl.DataFrame], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Where a sweep lives and what each trial may use. `storage_path`: a local or shared folder, or a
    bucket URI (s3://..., gs://...) for multi-node clusters without a shared file system."""

    name: str
    storage_path: str = "results/sweeps"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many trials as resources allow
    max_failures: int = 1  # a crashed trial is retried this many times (-1: forever); bad input never is
    metric: str = "ttt_error"  # the study's own metric (a mean of summarise's output); the searcher optimises it
    mode: str = "min"
    verbose: int = 0  # Ray Tune's console output: 0 one progress bar, 1 status table, 2 + every result
    # Resources of the actors a trial starts itself (Ray Data shards: one {"CPU": c, "GPU": g} per actor).
    # They join the trial's placement group, which Ray Tune makes the actors' home (child tasks are
    # captured), so a sweep never starts more trials than their shards can run on.
    child_bundles: tuple[dict[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"SweepConfig.name must be a non-empty folder name without '/', got {self.name!r}")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            raise ConfigError(f"cpus_per_trial and gpus_per_trial must be >= 0, got "
                              f"{self.cpus_per_trial} and {self.gpus_per_trial}")
        if self.cpus_per_trial + self.gpus_per_trial == 0 and not self.child_bundles:
            raise ConfigError("cpus_per_trial and gpus_per_trial are both 0 and there are no actors: "
                              "a trial must reserve something")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1 or None, got {self.max_concurrent}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures must be >= -1, got {self.max_failures}")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"SweepConfig.mode must be 'min' or 'max', got {self.mode!r}")
        if self.verbose not in (0, 1, 2, 3):
            raise ConfigError(f"verbose must be 0, 1, 2 or 3, got {self.verbose}")

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
    rows: pl.DataFrame  # every trial's rows (grids: in trial order)
    trials: pl.DataFrame  # one row per trial: config/* columns and the reported metrics
    grid: tune.ResultGrid
    path: str  # the experiment folder


def summarise_rows(rows: pl.DataFrame) -> dict[str, float]:
    """Mean value per (method, metric): {"ttt_error": 0.031, "global_cross_entropy": 0.12, ...}."""
    means = rows.group_by("method", "metric").agg(pl.col("value").mean())
    return {f"{m}_{k}": float(v) for m, k, v in means.iter_rows()}


def trial_labels(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short names of trials: the fields in which they differ ("model_size=280 seed=0")."""
    flat = [_flatten(c) for c in configs]
    varying = [k for k in flat[0] if len({json.dumps(f.get(k), default=str) for f in flat}) > 1] if flat else []
    return [" ".join(f"{k}={f.get(k)}" for k in varying) or "the trial" for f in flat]


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- files on a local folder or a bucket (pyarrow file systems) ----------------------------------

def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def _exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def _write_atomic(uri: str, write: Callable[[Any], None]) -> None:
    """Write to a temporary name beside the target, then move: readers never see half a file."""
    fs, path = _fs(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        write(f)
    fs.move(tmp, path)


def write_json(uri: str, obj: Any) -> None:
    _write_atomic(uri, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True, default=str).encode()))


def read_json(uri: str) -> Any | None:
    if not _exists(uri):
        return None
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def _read_rows(uri: str) -> pl.DataFrame:
    fs, path = _fs(uri)
    with fs.open_input_file(path) as f:
        return pl.read_parquet(f)


# --- provenance of one trial's cached rows ---------------------------------------------------------

def provenance(cfg: Any) -> dict[str, Any]:
    """What a trial's rows depend on besides its config: input file fingerprints and the code version (the same
    on the driver and on any worker; the device is added where the trial runs, see compute_device)."""
    return {"inputs": input_fingerprint(input_files(cfg)), "code_version": code_version()}


def compute_device(cfg: Any) -> str | None:
    """The device type a trial whose config leaves `device` at None computes on in *this* process: "cuda" when
    torch sees a GPU, else "cpu" (harness.devices.trial_device). None when the config pins its
    device (its hash covers it) or has no `device` field. Call it in the trial's worker: the driver may have no
    GPU while the workers do, and a trial reserving no GPU sees its node's GPUs (Ray >= 2.49 leaves
    CUDA_VISIBLE_DEVICES alone then), so only the process that runs the trial knows."""
    if not hasattr(cfg, "device") or cfg.device is not None:
        return None
    from harness.devices import trial_device  # lazy: torch

    return trial_device(None).type


def _device_reason(meta: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    if "device" not in expected or meta.get("device") == expected["device"]:
        return None
    return f"made on {meta.get('device') or 'an unrecorded device'}, this trial computes on {expected['device']}"


def stale_reason(meta: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> str | None:
    """Why cached rows with `meta` may not stand for a trial that expects `expected` (provenance(cfg), plus
    "device" where the trial resolves it); None if they may."""
    if meta is None:
        return "no provenance record"
    reasons = []
    changed = changed_inputs(meta.get("inputs", {}), expected["inputs"])
    if changed:
        reasons.append(f"input files changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    if meta.get("code_version") != expected["code_version"]:
        reasons.append(f"made by other code ({meta.get('code_version')} != {expected['code_version']})")
    device = _device_reason(meta, expected)
    if device:
        reasons.append(device)
    return "; ".join(reasons) or None


def _trainable(config: dict, *, trials_by_hash: Mapping[str, Any] | None, kind: TrialKind,
               expected: Mapping[str, dict], rows_path: str, summarise: Summarise, metric: str,
               require_split: str | None, reuse_stale: bool, run_kwargs: Mapping[str, Any], workdir: str,
               quiet: bool, done_path: str, mode: str = "min") -> None:
    """One Ray Tune trial: read back valid cached rows or compute them; report the summary."""
    if os.path.isdir(workdir):  # Tune starts trials in their own folder: relative paths mean the driver's
        os.chdir(workdir)
    # shared inputs come read-only from the object store; the trials never write them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if quiet:  # the sweep's one progress bar stands for the Ray Data pipelines a trial runs
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars, context.print_on_execution_start = False, False
    key = config_hash(config)
    cfg = trials_by_hash[key] if trials_by_hash is not None else kind.config(**config)
    want = dict(expected.get(key) or provenance(cfg))
    device = compute_device(cfg)
    if device is not None:  # resolved here: the driver cannot know where this trial computes
        want["device"] = device
    uri = f"{rows_path}/{key}.parquet"
    meta_uri = f"{rows_path}/{key}.meta.json"
    meta = read_json(meta_uri) if _exists(uri) else None
    reused = meta is not None and (reuse_stale or stale_reason(meta, want) is None)
    # the driver named stale inputs and code before the sweep; another device only shows here
    moved = {"device_changed": reason} if meta is not None and (reason := _device_reason(meta, want)) else {}
    if reused:
        rows = _read_rows(uri)
    else:
        kwargs = dict(run_kwargs)
        if "on_epoch" in kwargs:  # training curves to Tune and TensorBoard
            kwargs["on_epoch"] = lambda epoch, loss: tune.report({"epoch": epoch, "train_loss": loss})
        try:
            rows = kind.run(cfg, **kwargs)
            bad = [] if require_split is None else sorted(
                d for d in rows["dataset"].unique().to_list() if not d.endswith(f"-{require_split}"))
            if bad:
                raise ConfigError(f"this search tunes on the {require_split!r} split only, but the trial produced "
                                  f"rows of datasets {bad}; set the trial's split to {require_split!r}")
        except INPUT_ERRORS as e:  # bad input fails the same way every time: report it, do not retry
            if require_split is not None and isinstance(e, DivergedError):  # a search: this point's worst outcome
                tune.report({metric: math.inf if mode == "min" else -math.inf, "n_rows": 0, "diverged": str(e)})
                return
            tune.report({metric: math.nan, "n_rows": 0, "input_error": f"{type(e).__name__}: {e}"})
            return
        _write_atomic(uri, rows.write_parquet)
        write_json(meta_uri, {**want, "code_version": code_version(), "config_hash": key, "config": config})
    write_json(f"{done_path}/{key}.json", {"config_hash": key, "reused": reused})  # this run's rows, ready
    tune.report({**summarise(rows), "rows_uri": uri, "n_rows": rows.height, "reused": reused, **moved})


class _TrialProgress(tune.Callback):
    """One progress bar over the sweep's trials; the latest training epoch of a running trial beside it."""

    def __init__(self, total: int | None, name: str) -> None:
        self.total, self.name, self.bar = total, name, None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the run config; the bar stays here
        return {"total": self.total, "name": self.name, "bar": None}

    def setup(self, **info) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc=self.name, unit="trial", dynamic_ncols=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.bar is not None and "epoch" in result and "train_loss" in result:
            self.bar.set_postfix_str(f"training: epoch {result['epoch']} loss {result['train_loss']:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str("")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()


def _kwargs_for(kind_run: Callable, shared: Mapping[str, Any], curves: bool) -> dict[str, Any]:
    """The trial function's keyword inputs; with `curves`, its training epochs are reported to Tune (not in
    searches: a searcher reads every report as a value of its objective)."""
    import inspect

    params = inspect.signature(kind_run).parameters
    kwargs = dict(shared)
    if curves and "on_epoch" in params:
        kwargs["on_epoch"] = True  # replaced by a tune.report callback inside the trial
    return kwargs


def _fit(sweep: SweepConfig, param_space: dict, *, trials_by_hash: Mapping[str, Any] | None, kind: TrialKind,
         expected: Mapping[str, dict], shared: Mapping[str, Any], search_alg: Any, num_samples: int,
         restore: bool, reuse_stale: bool, summarise: Summarise, require_split: str | None,
         callbacks: Sequence[Any]) -> tune.ResultGrid:
    from harness.distributed.runtime import require_bundle

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # epoch reports carry no study metric
    if not sweep.verbose:  # one progress bar instead of Tune's boxes, tables and INFO lines
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # grids give Tune every config as a preset point over constants: Tune warns that they differ
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    head = {"CPU": sweep.cpus_per_trial, "GPU": sweep.gpus_per_trial}
    for i, bundle in enumerate([head, *sweep.child_bundles]):  # refuse infeasible trials before any work
        require_bundle(bundle, "cpus_per_trial/gpus_per_trial" if i == 0 else "actors x (cpus, gpus_per_actor)")
    run_id = _run_id(sweep, restore)
    trainable = tune.with_parameters(
        _trainable, trials_by_hash=trials_by_hash, kind=kind, expected=expected,
        rows_path=sweep.rows_path, summarise=summarise, metric=sweep.metric, mode=sweep.mode,
        require_split=require_split,
        reuse_stale=reuse_stale, run_kwargs=_kwargs_for(kind.run, shared, curves=trials_by_hash is not None),
        workdir=os.getcwd(), quiet=not sweep.verbose, done_path=f"{sweep.experiment_path}/runs/{run_id}",
    )
    trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([head, *sweep.child_bundles]))
    progress = [] if sweep.verbose else [_TrialProgress(num_samples, sweep.name)]
    run_config = tune.RunConfig(
        name=sweep.name, storage_path=sweep.storage_uri, verbose=sweep.verbose, callbacks=[*progress, *callbacks],
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
    )
    if restore:
        tuner = tune.Tuner.restore(sweep.experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space, run_config=run_config,
            tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=search_alg,
                                        num_samples=num_samples, max_concurrent_trials=sweep.max_concurrent),
        )
    grid = tuner.fit()
    moved = [(r.config, r.metrics) for r in grid if r.metrics and r.metrics.get("device_changed")]
    if moved:
        labels = trial_labels([c for c, _ in moved]) if len(moved) > 1 else ["the trial"]
        print(f"{sweep.name}: {len(moved)} trial(s) found cached rows made on another device:\n" + "\n".join(
            f"  {label}: {m['device_changed']}, "
            + ("reused as asked (--reuse-stale)" if m.get("reused") else "recomputed")
            for label, (_, m) in zip(labels, moved, strict=True)))
    failed = [(r.path, r.error) for r in grid if r.error is not None]
    if failed:
        lines = "\n".join(f"  {path}: {type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}"
                          for path, err in failed)
        raise RuntimeError(f"{len(failed)} of {len(grid)} trials crashed after {sweep.max_failures} retries "
                           f"(finished trials are kept; rerun with --resume to retry the rest):\n{lines}")
    bad = [(r.config, r.metrics["input_error"]) for r in grid if r.metrics and r.metrics.get("input_error")]
    if bad:
        labels = trial_labels([c for c, _ in bad]) if len(bad) > 1 else ["the trial"]
        raise ConfigError(f"{len(bad)} of {len(grid)} trials failed on bad input (not retried):\n"
                          + "\n".join(f"  {label}: {err}" for label, (_, err) in zip(labels, bad, strict=True)))
    return grid


def _run_id(sweep: SweepConfig, restore: bool) -> str:
    """This run's id: the restored run's (current.json), else a new one, written there."""
    current = read_json(f"{sweep.experiment_path}/current.json") if restore else None
    if current is not None and current.get("run_id"):
        return str(current["run_id"])
    run_id = uuid.uuid4().hex[:12]
    write_json(f"{sweep.experiment_path}/current.json", {"run_id": run_id})
    fs, runs = _fs(f"{sweep.experiment_path}/runs")  # the markers of earlier runs: nothing reads them any more
    if fs.get_file_info(runs).type == pafs.FileType.Directory:
        fs.delete_dir_contents(runs)
    return run_id


def _per_trial(grid: tune.ResultGrid) -> pl.DataFrame:
    return pl.DataFrame([{**{f"config/{k}": v for k, v in _flatten(r.config).items()},
                          **{k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str)) and k != "config"}}
                         for r in grid])


def run_trials(trials: Sequence[Any], sweep: SweepConfig, *, shared: Mapping[str, Any] | None = None,
               resume: bool = False, reuse_stale: bool = False, summarise: Summarise = summarise_rows,
               callbacks: Sequence[Any] = ()) -> SweepResult:
    """Run every trial config once as one Ray Tune sweep (Ray must be connected); rows in trial order.

    All trials are of one registered kind. `shared`: large read-only keyword inputs of the kind's `run`
    (e.g. images=...), put in the object store once. Raises ConfigError for duplicate trials (before any
    work) and for trials that failed on bad input; RuntimeError for trials that kept crashing."""
    if not trials:
        raise ConfigError("a sweep needs at least one trial")
    kinds = {trial_kind(t).name: trial_kind(t) for t in trials}
    if len(kinds) != 1:
        raise ConfigError(f"one sweep runs one trial kind, got {sorted(kinds)}")
    configs = [dataclasses.asdict(t) for t in trials]
    keys = [config_hash(c) for c in configs]
    labels = trial_labels(configs)
    dupes = sorted({labels[i] for i, k in enumerate(keys) if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"duplicate trials (each would be computed twice and counted twice): {dupes}")
    expected = {k: provenance(t) for k, t in zip(keys, trials, strict=True)}
    restore = _restorable(sweep, resume)
    if restore:
        finished = _finished_trials(sweep)
        bad = [c for c, result in finished if result.get("input_error")]
        if bad:  # Tune counts them as finished; the same sweep run afresh retries them and reuses the rest
            print(f"{sweep.name}: --resume: {len(bad)} trial(s) of the sweep failed on bad input; running it afresh "
                  "to retry them (the other trials reuse their cached rows where still valid)")
            restore = False
        elif not reuse_stale:  # (with it, _print_cache_state below says which stale rows are reused)
            label_of = dict(zip(keys, labels, strict=True))
            _refuse_stale_finished(sweep, finished, lambda c: expected.get(config_hash(c)),
                                   lambda c: label_of[config_hash(c)], False, "run without --resume to recompute them")
    verb = "reused as asked (--reuse-stale; their rows keep their own git sha)" if reuse_stale else "recomputed"
    _print_cache_state(sweep, keys, labels, expected, verb)
    from ray.tune.search import BasicVariantGenerator

    grid = _fit(sweep, dict(configs[0]), trials_by_hash=dict(zip(keys, trials, strict=True)),
                kind=next(iter(kinds.values())), expected=expected, shared=shared or {},
                search_alg=BasicVariantGenerator(points_to_evaluate=configs),
                num_samples=len(configs), restore=restore, reuse_stale=reuse_stale, summarise=summarise,
                require_split=None, callbacks=callbacks)
    by_key = {config_hash(r.config): _read_rows(r.metrics["rows_uri"]) for r in grid}
    missing = [label for key, label in zip(keys, labels, strict=True) if key not in by_key]
    if missing:  # a restored sweep of other trials (refused earlier by the study layer's option check)
        raise ConfigError(f"the sweep at {sweep.experiment_path} holds no result for trials {missing}")
    return SweepResult(pl.concat([by_key[k] for k in keys], how="diagonal_relaxed"), _per_trial(grid), grid,
                       sweep.experiment_path)


def _print_cache_state(sweep: SweepConfig, keys: list[str], labels: list[str], expected: Mapping[str, dict],
                       verb: str) -> None:
    """Say which trials' cached rows will be reused, which are stale (and why) and which are new."""
    reused, devices, stale = 0, set(), []
    for key, label in zip(keys, labels, strict=True):
        if not _exists(f"{sweep.rows_path}/{key}.parquet"):
            continue
        meta = read_json(f"{sweep.rows_path}/{key}.meta.json")
        reason = stale_reason(meta, expected[key])
        if reason is None:
            reused += 1
            devices |= {meta["device"]} if meta and meta.get("device") else set()
        else:
            stale.append(f"  {label}: {reason}")
    if stale:
        print(f"{sweep.name}: {len(stale)} trial(s) have stale cached rows, {verb}:\n" + "\n".join(stale))
    if reused:  # the device a trial computes on is known only in its worker, which checks it again
        where = (f"; made on {' and '.join(sorted(devices))}: recomputed by a trial computing elsewhere"
                 if devices else "")
        print(f"{sweep.name}: {reused} of {len(keys)} trial(s) reuse their cached rows (same config, inputs and "
              f"code{where})")


def _restorable(sweep: SweepConfig, resume: bool) -> bool:
    """Whether `resume` restores a stored sweep (saying so when there is none to restore)."""
    if not resume:
        return False
    if tune.Tuner.can_restore(sweep.experiment_path):
        return True
    print(f"no sweep to resume at {sweep.experiment_path}; starting it (valid cached rows are reused)")
    return False


def _finished_trials(sweep: SweepConfig) -> list[tuple[dict, dict]]:
    """(config, last result) of each trial that a restored sweep hands back as it ended, without running it."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    return [(t.config, t.last_result or {}) for t in ExperimentAnalysis(sweep.experiment_path).trials
            if t.status == Trial.TERMINATED]


def _refuse_stale_finished(sweep: SweepConfig, finished: Sequence[tuple[dict, dict]],
                           expect: Callable[[dict], Mapping[str, Any] | None], label: Callable[[dict], str],
                           reuse_stale: bool, recompute: str) -> None:
    """Before a restore: the finished trials' rows will come back unchecked, so rows made from other inputs or
    by other code refuse the resume (naming each trial and why) unless `reuse_stale`. Unfinished trials are
    not looked at: the restore runs them again, and their worker recomputes what is stale or has no record.
    `expect(config)`: the provenance the trial expects (None: not a trial of this sweep)."""
    stale = []
    for config, result in finished:
        expected = expect(config) if result.get("rows_uri") else None
        if expected is None:
            continue
        reason = stale_reason(read_json(result["rows_uri"].removesuffix(".parquet") + ".meta.json"), expected)
        if reason is not None:
            stale.append(f"  {label(config)}: {reason}")
    if not stale:
        return
    listed = "\n".join(stale)
    if reuse_stale:
        print(f"{sweep.name}: {len(stale)} finished trial(s) have stale cached rows, reused as asked "
              f"(--reuse-stale; their rows keep their own git sha):\n{listed}")
        return
    print(f"{sweep.name}: {len(stale)} finished trial(s) have stale cached rows, so --resume is refused:\n{listed}")
    raise ConfigError(f"--resume: {len(stale)} finished trial(s) of the sweep at {sweep.experiment_path} were made "
                      f"by other code or from other inputs, and a restored sweep hands them back as they are:\n"
                      f"{listed}\n{recompute}, or add --reuse-stale to keep them")


OPTUNA_DB = "optuna.db"  # the Optuna study of a search, beside its Tune experiment


def optuna_url(sweep: SweepConfig) -> str | None:
    """`sqlite:///<experiment path>/optuna.db`, the storage of the sweep's Optuna search (what
    `optuna-dashboard` and `optuna.load_study(study_name=sweep.name, storage=...)` open); None for a bucket URI
    (SQLite needs a local or shared file system)."""
    if "://" in sweep.storage_path:
        return None
    return f"sqlite:///{Path(sweep.experiment_path) / OPTUNA_DB}"


def optuna_storage(sweep: SweepConfig, resume: bool) -> Any:
    """The search's persistent Optuna storage (an RDBStorage on optuna_url), or None (in memory) for a bucket.
    A new search (no resume) starts its study afresh: a study of the same name left by an earlier search is
    deleted, so TPE never learns from trials of another run."""
    import optuna

    url = optuna_url(sweep)
    if url is None:
        print(f"{sweep.name}: the Optuna study is kept in memory (no SQLite file on {sweep.storage_path}); "
              "optuna-dashboard cannot open it")
        return None
    Path(sweep.experiment_path).mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(url)
    if not resume:
        try:
            optuna.delete_study(study_name=sweep.name, storage=storage)
        except KeyError:  # no earlier study of this name
            pass
    return storage


def search_trials(config_cls: type, space: Mapping[str, Any], sweep: SweepConfig, *,
                  fixed: Mapping[str, Any] | None = None, num_samples: int = 20, max_concurrent: int = 2,
                  seed: int = 0, resume: bool = False, reuse_stale: bool = False,
                  shared: Mapping[str, Any] | None = None, require_split: str = "val",
                  callbacks: Sequence[Any] = ()) -> SweepResult:
    """Tune hyperparameters with OptunaSearch (TPE, seeded) under a ConcurrencyLimiter.

    space: Tune domains of config fields, e.g. {"ttt_lr": tune.loguniform(1e-4, 1e-1)}; fixed: the other
    fields. Every trial's rows must come from a dataset named "*-<require_split>" (validation), never test.
    Best: `result.grid.get_best_result()`. The Optuna study (named `sweep.name`) persists in
    `<experiment path>/optuna.db` (see optuna_url): `optuna-dashboard sqlite:///.../optuna.db` opens it.
    `resume` restores the search and its Optuna study; it is refused (ConfigError, before any work) when a
    finished trial failed on bad input or has stale rows, which TPE would go on learning from (`reuse_stale`:
    keep them, and reuse stale cached rows in new trials too)."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    kind = next((k for k in (TRIALS.get(n) for n in TRIALS.names()) if k.config is config_cls), None)
    if kind is None:
        raise ConfigError(f"{config_cls.__name__} is not a registered trial config")
    if max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be >= 1, got {max_concurrent}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    overlap = set(space) & set(fixed or {})
    if overlap:
        raise ConfigError(f"keys {sorted(overlap)} are both searched and fixed")
    unknown = (set(space) | set(fixed or {})) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise ConfigError(f"unknown {config_cls.__name__} fields {sorted(unknown)}")
    restore = _restorable(sweep, resume)
    if restore:
        _check_restored_search(sweep, kind, reuse_stale)
    storage = optuna_storage(sweep, resume=resume)
    searcher = ConcurrencyLimiter(OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=seed, study_name=sweep.name,
                                               storage=storage), max_concurrent=max_concurrent)
    grid = _fit(sweep, {**(fixed or {}), **space}, trials_by_hash=None, kind=kind, expected={},
                shared=shared or {}, search_alg=searcher, num_samples=num_samples, restore=restore,
                reuse_stale=reuse_stale, summarise=summarise_rows, require_split=require_split, callbacks=callbacks)
    diverged = [(r.config, r.metrics["diverged"]) for r in grid if r.metrics and r.metrics.get("diverged")]
    if diverged:
        labels = trial_labels([c for c, _ in diverged]) if len(diverged) > 1 else ["one trial"]
        print(f"{sweep.name}: {len(diverged)} of {len(grid)} trials diverged; the searcher was given the worst value "
              "for them and they have no rows:\n" + "\n".join(f"  {label}: {err}" for label, (_, err)
                                                                in zip(labels, diverged, strict=True)))
    done = [r for r in grid if r.metrics and r.metrics.get("rows_uri")]
    if not done:
        raise ConfigError(f"every one of the {len(grid)} trials of the search diverged (listed above): the search "
                          "space's learning rates are too large for these features")
    rows = pl.concat([_read_rows(r.metrics["rows_uri"]) for r in done], how="diagonal_relaxed")
    return SweepResult(rows, _per_trial(grid), grid, sweep.experiment_path)


def _check_restored_search(sweep: SweepConfig, kind: TrialKind, reuse_stale: bool) -> None:
    """Refuse to restore a search whose finished trials failed on bad input (its Optuna study has recorded them:
    a restored search cannot run them again) or have stale rows (unless `reuse_stale`), naming each trial."""
    finished = _finished_trials(sweep)
    labels = dict(zip((config_hash(c) for c, _ in finished), trial_labels([c for c, _ in finished]), strict=True))
    bad = [(c, r["input_error"]) for c, r in finished if r.get("input_error")]
    if bad:
        raise ConfigError(
            f"--resume: {len(bad)} trial(s) of the search at {sweep.experiment_path} failed on bad input:\n"
            + "\n".join(f"  {labels[config_hash(c)]}: {err}" for c, err in bad)
            + "\nA restored search keeps its finished trials as they ended (its Optuna study has recorded them), so "
            "it cannot retry them: fix the input, then run without --resume (a new search; the cached rows of the "
            "trials that succeeded are reused where still valid)")

    def expect(config: dict) -> Mapping[str, Any]:
        try:
            return provenance(kind.config(**config))
        except INPUT_ERRORS as e:
            raise ConfigError(f"--resume: the finished trial {labels[config_hash(config)]} of the search at "
                              f"{sweep.experiment_path} has a config that the code now refuses ({e}); run without "
                              "--resume to start the search afresh") from None

    _refuse_stale_finished(sweep, finished, expect, lambda c: labels[config_hash(c)], reuse_stale,
                           "run without --resume to start the search afresh (it recomputes them and reuses every "
                           "valid cached row; TPE learns anew)")
