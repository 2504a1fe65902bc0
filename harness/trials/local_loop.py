"""Run a study's trials (frozen dataclass configs) as one Ray Tune grid through `harness.distributed.sweep`.

Each trial is a grid point `{"trial": "<name>-<config hash>"}`; a small wrapper looks its dataclass up and
calls the study's trial function `trial_fn(trial, **shared)`. Large inputs (`shared`, e.g. the MNIST
arrays) go to the object store once. Rows are written atomically per trial under
`<sweep.rows_path>/`, and a trial whose rows exist is read back instead of recomputed (resume), so
`python studies/<x>.py` runs on a local Ray and `ray submit cluster.yaml studies/<x>.py -- ...` spreads
the same trials over a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import polars as pl

from harness.distributed.study_sweep import ray_session
from harness.distributed.sweep import SweepConfig, grid_space, run_sweep
from harness.results.schema import config_hash

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
