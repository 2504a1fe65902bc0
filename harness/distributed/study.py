"""A study's sweep, from its config to its rows: the Ray and sweep options every study shares, defined once.

    @dataclass(frozen=True)
    class ModelScaling:          # the study's config: its sweep axes, then `ray: RayOptions = RayOptions()`
        sizes: tuple[int, ...] = (280, 1268)
        ...
    rows = run_study(cfg, cfg.trials(), name="model_scaling", out_dir=cfg.out_dir, metric="ttt_error")

`run_study` refuses duplicate sweep values and (with `resume`) options that differ from the stored
sweep's, names what it refuses, joins Ray as `ray submit` expects (RAY_ADDRESS, this machine's cluster,
else a new local Ray), reserves each trial's resources (or one bundle per Ray Data actor with `actors`)
and runs the trials through `harness.distributed.sweep.run_trials`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from harness.errors import ConfigError
from harness.registry import Registry

RUNTIME_OPTIONS = ("address", "resume", "reuse_stale", "verbose", "callbacks")  # how to run, not what: may differ
# on resume

# Ray Tune logger callbacks by name (`--callbacks wandb mlflow`): factories of the experiment name, importing
# their integration only when used. Settings come from the tools' own environment variables (WANDB_PROJECT,
# WANDB_MODE, WANDB_API_KEY; MLFLOW_TRACKING_URI). Any other tune.Callback: `--callbacks package.module:Class`.
TUNE_LOGGERS: Registry[Callable[[str], Any]] = Registry("Ray Tune logger callback")
_LOGGER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}  # name -> the package its integration needs


@TUNE_LOGGERS.register("wandb")
def _wandb_logger(experiment: str) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    return WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "ttt-harness"), group=experiment)


@TUNE_LOGGERS.register("mlflow")
def _mlflow_logger(experiment: str) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"), experiment_name=experiment)


def _check_callback(name: str) -> None:
    """Refuse (naming --callbacks) a callback that is neither registered nor an importable module:Class path,
    or whose package is not installed, before any work."""
    import importlib.util

    if ":" in name:
        module = name.split(":", 1)[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(f"--callbacks {name}: module {module!r} cannot be imported")
        return
    if name not in TUNE_LOGGERS:
        try:
            TUNE_LOGGERS.get(name)
        except KeyError as e:
            raise ConfigError(f"--callbacks: {e.args[0]}, or a tune.Callback as package.module:Class") from None
    package = _LOGGER_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"--callbacks {name} needs the {package!r} package: pip install {package}")


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how a study's trials run (Ray cluster, Tune storage, resources); the same for every study."""

    address: str | None = None  # Ray cluster (None: RAY_ADDRESS, else this machine's cluster, else a new local Ray)
    resume: bool = False  # restore a killed sweep and finish it (refused if other options differ from the stored ones)
    storage_path: str | None = None  # Ray Tune storage: a shared folder or s3://... (None: <out-dir>/sweeps)
    cpus_per_trial: float = 1.0  # CPUs each trial reserves
    gpus_per_trial: float | None = None  # GPUs each trial reserves (None: 1 with --device cuda, else 0; 0.5 shares)
    actors: int = 0  # Ray Data actors each trial shards its test points over (0: the trial's own process)
    gpus_per_actor: float = 0.0  # GPUs per Ray Data actor (fractions share a GPU)
    reuse_stale: bool = False  # reuse cached rows made by other code or from edited inputs (they keep their git sha)
    verbose: int = 0  # Ray Tune's console output: 0 one progress bar, 1 its status table, 2 every result
    callbacks: tuple[str, ...] = ()  # Ray Tune logger callbacks: wandb, mlflow, or a tune.Callback as module:Class

    def __post_init__(self) -> None:
        for name in self.callbacks:
            _check_callback(name)
        if self.cpus_per_trial < 0:
            raise ConfigError(f"--cpus-per-trial must be >= 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.actors < 0:
            raise ConfigError(f"--actors must be >= 0, got {self.actors}")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")
        if self.gpus_per_actor > 0 and self.actors == 0:
            raise ConfigError(f"--gpus-per-actor {self.gpus_per_actor} needs --actors >= 1 (with --actors 0 the "
                              "trial evaluates in its own process; use --gpus-per-trial there)")
        if self.verbose not in (0, 1, 2, 3):
            raise ConfigError(f"--verbose must be 0, 1, 2 or 3, got {self.verbose}")

    def tune_callbacks(self, experiment: str) -> list[Any]:
        """The Ray Tune callbacks `--callbacks` names, made for the experiment (sweep) `experiment`."""
        import importlib

        from ray import tune

        out = []
        for name in self.callbacks:
            if ":" in name:
                module, attr = name.split(":", 1)
                obj = getattr(importlib.import_module(module), attr, None)
                if obj is None:
                    raise ConfigError(f"--callbacks {name}: module {module!r} has no {attr!r}")
                callback = obj()
            else:
                callback = TUNE_LOGGERS.get(name)(experiment)
            if not isinstance(callback, tune.Callback):
                raise ConfigError(f"--callbacks {name}: {type(callback).__name__} is not a ray.tune.Callback")
            out.append(callback)
        return out


def option_name(field: str) -> str:
    """The command-line spelling of a config field: ttt_k -> --ttt-k."""
    return "--" + field.replace("_", "-")


def check_unique_values(cfg: Any) -> None:
    """Raise naming the option if a tuple-valued field (a sweep axis) repeats a value: its trials would be
    computed twice and counted twice, narrowing the confidence intervals."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, tuple) and all(isinstance(v, (int, float, str)) for v in value):
            repeated = sorted({v for v in value if value.count(v) > 1}, key=str)
            if repeated:
                raise ConfigError(f"{option_name(f.name)} repeats {repeated}: give each value once")
        elif dataclasses.is_dataclass(value):
            check_unique_values(value)


def study_options(cfg: Any) -> dict[str, Any]:
    """The study config as stored beside its sweep (JSON-able), without the options that only say how to run."""
    options = dataclasses.asdict(cfg)
    ray_field = next((f.name for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), RayOptions)), None)
    if ray_field is not None:
        options[ray_field] = {k: v for k, v in options[ray_field].items() if k not in RUNTIME_OPTIONS}
    return options


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'--option: stored X, now Y' per differing field (nested option groups have no prefix on the CLI)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b)
        elif _json(a) != _json(b):
            out.append(f"{option_name(key)}: stored {a!r}, now {b!r}")
    return out


def _json(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, default=str))


def check_resume(cfg: Any, sweep_path: str, resume: bool) -> None:
    """With resume, refuse options that differ from the stored sweep's (naming each); store them otherwise."""
    from harness.distributed.sweep import read_json, write_json

    stored_uri = f"{sweep_path}/study.json"
    now = _json(study_options(cfg))
    if resume:
        stored = read_json(stored_uri)
        if stored is not None:
            diff = _differences(stored, now)
            if diff:
                raise ConfigError(f"--resume: the sweep at {sweep_path} was started with other options; resume it "
                                  "with the same options, or drop --resume to run this sweep:\n  " + "\n  ".join(diff))
            return
    write_json(stored_uri, now)


def check_writable(folder: str | os.PathLike, option: str = "--out-dir") -> None:
    """Raise naming the option unless `folder` can be created and written (checked before any work)."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{option} {folder}: cannot write there ({e.strerror or e})") from None


def sweep_config(name: str, out_dir: str, ray_options: RayOptions, device: str | None, metric: str,
                 mode: str):
    """The study's SweepConfig: storage `<storage_path or out_dir/sweeps>/<name>`, each trial's resources."""
    from harness.distributed.sharding import ShardingConfig
    from harness.distributed.sweep import SweepConfig

    storage = ray_options.storage_path or str(Path(out_dir) / "sweeps")
    if ray_options.actors:  # the trial only coordinates; its actors hold the resources
        sharding = ShardingConfig(actors=ray_options.actors, gpus_per_actor=ray_options.gpus_per_actor)
        bundle = {"CPU": sharding.cpus_per_actor, "GPU": sharding.gpus_per_actor}
        return SweepConfig(name, storage, cpus_per_trial=0, child_bundles=(bundle,) * ray_options.actors,
                           metric=metric, mode=mode, verbose=ray_options.verbose)
    gpus = ray_options.gpus_per_trial if ray_options.gpus_per_trial is not None else (1.0 if device == "cuda" else 0.0)
    return SweepConfig(name, storage, cpus_per_trial=ray_options.cpus_per_trial, gpus_per_trial=gpus,
                       metric=metric, mode=mode, verbose=ray_options.verbose)


def study_device(cfg: Any) -> str | None:
    """The device a study's trials compute on: its ComputeOptions' (or a `device` among its own fields)."""
    return getattr(getattr(cfg, "compute", cfg), "device", None)


def prepare_sweep(cfg: Any, *, name: str, out_dir: str, metric: str, mode: str = "min",
                  ray_options: RayOptions | None = None) -> Any:
    """The checks every study sweep makes before any work (duplicate values, a writable out-dir, resume
    options equal to the stored ones) and its SweepConfig."""
    opts = ray_options if ray_options is not None else cfg.ray
    check_unique_values(cfg)
    if getattr(cfg, "epochs", None) == 0:
        raise ConfigError("--epochs 0 leaves the global model untrained (its error would be chance level); "
                          "give --epochs >= 1, or None for the paper's tables")
    check_writable(out_dir)
    sweep = sweep_config(name, out_dir, opts, study_device(cfg), metric, mode)
    check_resume(cfg, sweep.experiment_path, opts.resume)
    return sweep


def record_sweep(cfg: Any, *, name: str, out_dir: str, started: float, rows: pl.DataFrame, trials: int,
                 reused: int | None, cluster: Mapping[str, Any], storage: str) -> None:
    """Add sweep `name` to `<out_dir>/run.json` (harness.results.run_record): the study's options and their
    hash, the preset and options of its command line, when it ran, its trials (and the config hashes their
    `rows` carry) and the cluster it ran on."""
    from harness.cli import invocation
    from harness.results.run_record import merge_sweep, now_iso, read_run, study_config_hash, write_run
    from harness.results.schema import git_sha

    options = _json(study_options(cfg))
    ray_field = next((f.name for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), RayOptions)), None)
    how = invocation(cfg)
    study = {"options": options, "config_hash": study_config_hash(options, ray_field), "git_sha": git_sha(),
             "preset": how.preset if how else None, "options_given": list(how.options) if how else None}
    sweep = {"started": now_iso(started), "ended": now_iso(),
             "wall_time_s": round(time.time() - started, 3), "trials": trials, "reused": reused,
             "config_hashes": sorted(rows["config_hash"].unique().drop_nulls().to_list()), "cluster": dict(cluster),
             "storage": storage}
    try:
        previous = read_run(out_dir)
    except ValueError:  # an unreadable record is replaced by this one
        previous = None
    write_run(out_dir, merge_sweep(previous, study, name, sweep))


def check_cluster(cfg: Any, opts: RayOptions) -> None:
    """Inside the Ray session, before any trial: what the study asks of the cluster exists (ConfigError naming
    the option): a GPU for --device cuda (trials would wait forever), and the GPUs --actors x --gpus-per-actor."""
    from harness.distributed.runtime import cluster_offers_gpus, require_resources
    from harness.distributed.sharding import ShardingConfig

    if study_device(cfg) == "cuda" and not cluster_offers_gpus():
        raise ConfigError("--device cuda, but no node of this Ray cluster has a GPU; use --device cpu "
                          "(or None: cuda where available)")
    if opts.actors:  # GPUs asked for where none exist: fail now, naming the option
        require_resources(opts.gpus_per_actor, ShardingConfig().cpus_per_actor)


def run_study(cfg: Any, trials: Sequence[Any], *, name: str, out_dir: str, metric: str, mode: str = "min",
              shared: Mapping[str, Any] | None = None, ray_options: RayOptions | None = None) -> pl.DataFrame:
    """Every trial's rows, in trial order, from one Ray Tune sweep named `name` (see the module docstring).

    cfg: the study's config (its options are checked and stored beside the sweep); trials: its trial
    configs, all of one registered kind; shared: large read-only inputs of the trial function."""
    from harness.distributed.runtime import cluster_summary, ray_session
    from harness.distributed.sharding import ShardingConfig
    from harness.distributed.sweep import run_trials
    from harness.registry import trial_kind

    opts = ray_options if ray_options is not None else cfg.ray
    shared = dict(shared or {})
    if opts.actors:  # shardable kinds get their actors here; a kind with its own pool names it in its config
        if not all(trial_kind(t).shardable or getattr(t, "actors", None) == opts.actors for t in trials):
            raise ConfigError(f"--actors {opts.actors}: the trials of {name} do not shard over Ray Data actors; "
                              "use --actors 0")
        if all(trial_kind(t).shardable for t in trials):
            shared["sharding"] = ShardingConfig(actors=opts.actors, gpus_per_actor=opts.gpus_per_actor)
    data = {k: v for k, v in shared.items() if k != "sharding"}
    for trial in trials:  # against the data: neighbourhoods and test points fit, the engine can run here
        check = getattr(trial, "check_inputs", None)
        if check is not None:
            check(**data)
    sweep = prepare_sweep(cfg, name=name, out_dir=out_dir, metric=metric, mode=mode, ray_options=opts)
    started = time.time()
    with ray_session(opts.address):
        check_cluster(cfg, opts)
        result = run_trials(trials, sweep, shared=shared, resume=opts.resume, reuse_stale=opts.reuse_stale,
                            callbacks=opts.tune_callbacks(name))
        cluster = cluster_summary()
    reused = int(result.trials["reused"].fill_null(False).sum()) if "reused" in result.trials.columns else None
    record_sweep(cfg, name=name, out_dir=out_dir, started=started, rows=result.rows, trials=len(trials),
                 reused=reused, cluster=cluster, storage=sweep.experiment_path)
    return result.rows
