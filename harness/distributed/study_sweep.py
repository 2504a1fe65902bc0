"""The sweep options every study script shares: where its Ray cluster is, where its Ray Tune sweeps live,
whether to restore a killed sweep, and what each trial reserves. One parser helper, one config, one Ray
session, so `python studies/<x>.py` (a local Ray) and `ray submit cluster.yaml studies/<x>.py -- <args>`
(the cluster) run the same trials.

    p = argparse.ArgumentParser(); add_sweep_args(p)
    options = sweep_options_from_args(p.parse_args(argv))
    options.sweep("mlp_scaling", out_dir)  # -> SweepConfig, rows under <out_dir>/sweeps/mlp_scaling/rows/
    rows = run_trials(trials, trial_fn, options.sweep(...), name=..., shared=..., address=options.address)

`run_trials` runs a study's trials (frozen dataclass configs) as one Ray Tune grid: each trial is a grid
point `{"trial": "<name>-<config hash>"}`; a small wrapper looks its dataclass up and calls the study's
trial function `trial_fn(trial, **shared)`. Large inputs (`shared`, e.g. the MNIST arrays) go to the
object store once; rows are written atomically per trial and a trial whose rows exist is read back
instead of recomputed (resume).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import ray

from harness.distributed.runtime import init_ray
from harness.distributed.sweep import SweepConfig, grid_space, run_sweep
from harness.results.schema import config_hash


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    address: str | None = None  # None: RAY_ADDRESS or a new local Ray; "auto": this machine's cluster
    resume: bool = False  # restore the killed sweep (Tuner.restore); finished trials are never redone anyway
    storage_path: str | None = None  # Ray Tune storage (shared folder or bucket URI); None: <out_dir>/sweeps
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the study's device is "cuda", else 0

    def __post_init__(self) -> None:
        if self.cpus_per_trial < 0 or (self.gpus_per_trial or 0.0) < 0:
            raise ValueError(f"SweepOptions.cpus_per_trial and gpus_per_trial must be >= 0, got "
                             f"{self.cpus_per_trial} and {self.gpus_per_trial}")

    def sweep(self, name: str, out_dir: str, device: str | None = None, metric: str = "n_rows",
              mode: str = "max") -> SweepConfig:
        """The study's SweepConfig: `<storage_path or out_dir/sweeps>/<name>`. A grid has no objective, so
        Tune's metric defaults to `n_rows`, which every trial reports (studies differ in their metrics).
        device "cuda" reserves one GPU per trial unless gpus_per_trial says otherwise (Ray hides GPUs from
        trials that reserve none)."""
        storage = self.storage_path or str(Path(out_dir) / "sweeps")
        gpus = self.gpus_per_trial if self.gpus_per_trial is not None else (1.0 if device == "cuda" else 0.0)
        return SweepConfig(name, storage, cpus_per_trial=self.cpus_per_trial, gpus_per_trial=gpus,
                           metric=metric, mode=mode)


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    """--address, --resume, --storage-path, --cpus-per-trial, --gpus-per-trial."""
    g = parser.add_argument_group("Ray (local by default; `ray submit cluster.yaml studies/<x>.py -- ...` for a cluster)")
    g.add_argument("--address", help="Ray cluster address ('auto' under ray submit; default: RAY_ADDRESS or local)")
    g.add_argument("--resume", action="store_true", help="restore the killed sweep and finish it")
    g.add_argument("--storage-path", help="Ray Tune storage: shared folder or s3://... (default: <out-dir>/sweeps)")
    g.add_argument("--cpus-per-trial", type=float, help="CPUs each trial reserves (default 1)")
    g.add_argument("--gpus-per-trial", type=float, help="GPUs each trial reserves (default: 1 with --device cuda, else 0; fractions share a GPU)")


def sweep_options_from_args(args: argparse.Namespace) -> SweepOptions:
    given = {"address": args.address, "resume": args.resume or None, "storage_path": args.storage_path,
             "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial}
    return SweepOptions(**{k: v for k, v in given.items() if v is not None})


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Join (or start locally) Ray for the block; shut it down afterwards only if this block started it."""
    connected_here = init_ray(address)
    try:
        yield
    finally:
        if connected_here:
            ray.shutdown()


C = TypeVar("C")


def _run_one(config: dict, *, study_trial_fn: Callable[..., pl.DataFrame], trials_by_key: Mapping[str, Any],
             workdir: str, **shared) -> pl.DataFrame:
    """The sweep's trial function: the study's trial on the dataclass named by config["trial"]."""
    key = config["trial"]
    if key not in trials_by_key:
        raise KeyError(f"trial {key!r} of the restored sweep is not among this run's trials; "
                       "resume with the options the sweep was started with")
    if os.path.isdir(workdir):  # Tune starts trials in their own folder: relative paths (caches) mean the driver's
        os.chdir(workdir)
    return study_trial_fn(trials_by_key[key], **shared)


def run_trials(trials: Sequence[C], trial_fn: Callable[..., pl.DataFrame], sweep: SweepConfig,
               name: Callable[[C], str], *, shared: Mapping[str, Any] | None = None, resume: bool = False,
               address: str | None = None) -> pl.DataFrame:
    """Rows of every trial, concatenated in trial order; `name(trial)` prefixes its grid key.

    trial_fn(trial, **shared) -> rows. Ray is joined at `address` (None: RAY_ADDRESS or a new local Ray,
    shut down on return) unless already connected.
    """
    keys = [f"{name(t)}-{config_hash(t)}" for t in trials]
    trials_by_key = dict(zip(keys, trials))
    with ray_session(address):
        result = run_sweep(
            _run_one, grid_space({"trial": list(trials_by_key)}), sweep, resume=resume, address=address,
            shared={"study_trial_fn": trial_fn, "trials_by_key": trials_by_key, "workdir": os.getcwd(),
                    **dict(shared or {})},
        )
    # run_sweep concatenates rows in ResultGrid order; cut them per trial and put them back in trial order
    ends = result.trials["n_rows"].cum_sum().to_list()
    by_key = {key: result.rows.slice(end - n, n)
              for key, n, end in zip(result.trials["config/trial"].to_list(), result.trials["n_rows"].to_list(), ends)}
    return pl.concat([by_key[key] for key in keys], how="diagonal_relaxed")
