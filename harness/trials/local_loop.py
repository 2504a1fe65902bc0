"""The in-process trial loop every study script uses until it moves to `harness.distributed.sweep`:
run each trial once, write its rows to `<out_dir>/trials/<name>-<config hash>.parquet` atomically,
and read finished trials back instead of recomputing them (resume)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import polars as pl
from tqdm import tqdm

from harness.results.schema import config_hash, read_results, write_parquet_atomic

C = TypeVar("C")


def run_trials(trials: Sequence[C], trial_fn: Callable[[C], pl.DataFrame], out_dir: str | os.PathLike,
               name: Callable[[C], str], desc: str = "trials") -> pl.DataFrame:
    """Rows of every trial, concatenated in trial order; `name(trial)` prefixes its Parquet file."""
    frames = []
    for trial in tqdm(trials, desc=desc, unit="trial"):
        part = Path(out_dir) / "trials" / f"{name(trial)}-{config_hash(trial)}.parquet"
        if part.exists():  # finished before: resume without recomputing
            frames.append(read_results(part))
            continue
        rows = trial_fn(trial)
        write_parquet_atomic(rows, part)
        frames.append(rows)
    return pl.concat(frames, how="diagonal_relaxed")
