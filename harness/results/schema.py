"""One row schema for every study, atomic Parquet writing, Polars aggregation with bootstrap CIs.

A result row is one metric of one test point under one method and run:
    study, dataset, model_size, method, seed, k, experts, fraction, point_id, subset, metric, value
plus run metadata (hparams as JSON, config hash, git sha, device, wall time, and where the wall time went,
`phase_seconds`: JSON {"train": s, "features": s, "retrieval": s, "ttt": s, ...}) so tables from
different runs join. Columns that do not apply to a study are null (e.g. `experts` in S1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import polars as pl

from harness.eval.metrics import bootstrap_means
from harness.results.atomic import atomic_path

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "study": pl.Utf8,
    "dataset": pl.Utf8,
    "model_size": pl.Int64,  # parameter count (S1, S3), hidden dim (S2, S10), d2 (S11)
    "method": pl.Utf8,  # "global", "ttt", "majority", "moe", ...
    "seed": pl.Int64,
    "k": pl.Int64,
    "experts": pl.Int64,
    "fraction": pl.Float64,
    "point_id": pl.Int64,
    "subset": pl.Utf8,  # the point's part of the dataset (S3: its Pile subset, e.g. "ArXiv"); null elsewhere
    "metric": pl.Utf8,  # "error", "cross_entropy", "bits_per_byte", "squared_error", ...
    "value": pl.Float64,
    "hparams": pl.Utf8,  # JSON of the method's hyperparameters
    "config_hash": pl.Utf8,
    "git_sha": pl.Utf8,
    "device": pl.Utf8,
    "wall_time_s": pl.Float64,
    "phase_seconds": pl.Utf8,  # JSON: the trial's wall time by phase (null where a trial does not record it)
}

_GIT_SHA: str | None = None
_FROM_RUN = object()  # point_rows' default for k: take it from the RunInfo


def git_sha() -> str:
    """The code version: HEAD's sha (with '-dirty' for uncommitted changes), or 'unknown'."""
    global _GIT_SHA
    if _GIT_SHA is None:
        here = Path(__file__).resolve().parent
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True).stdout.strip()
            _GIT_SHA = sha + ("-dirty" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            _GIT_SHA = "unknown"
    return _GIT_SHA


def config_hash(config: object) -> str:
    """Stable 12-hex hash of a dataclass or JSON-able config."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What identifies a block of rows: the study's coordinates plus run metadata."""

    study: str
    dataset: str
    model_size: int | None = None
    seed: int | None = None
    k: int | None = None
    experts: int | None = None
    fraction: float | None = None
    config_hash: str = ""
    device: str = "cpu"
    wall_time_s: float | None = None
    phase_seconds: dict[str, float] | None = None  # {"train": s, "features": s, "retrieval": s, "ttt": s, ...}


def point_rows(
    run: RunInfo,
    method: str,
    metric: str,
    values: np.ndarray,
    point_ids: np.ndarray,
    hparams: dict | None = None,
    k: int | None | object = _FROM_RUN,
    subsets: list[str | None] | None = None,
) -> pl.DataFrame:
    """Rows for one metric of one method: values (n,) and point_ids (n,), optionally each point's subset (n,).

    `k` overrides run.k for this method (None: not applicable, e.g. the global model).
    Every value must be finite: a NaN or inf is refused with a ValueError naming the study, method, metric, the
    run's coordinates and how many points (the last line of defence: a NaN mean in a table reads as a result,
    and a trial should have said what went wrong before it got here, e.g. prediction_metrics on a diverged TTT).
    A ValueError ends a sweep's trial without a retry (the same input fails the same way) and the study names it."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    point_ids = np.asarray(point_ids, dtype=np.int64).reshape(-1)
    if values.shape != point_ids.shape:
        raise ValueError(f"values shape {values.shape} differs from point_ids shape {point_ids.shape}")
    n = values.size
    bad = ~np.isfinite(values)
    if bad.any():
        coords = ", ".join(f"{name}={getattr(run, name)}" for name in ("dataset", "model_size", "seed", "k",
                                                                      "experts", "fraction")
                           if getattr(run, name) is not None)
        ids = ", ".join(map(str, point_ids[bad][:5])) + (", ..." if bad.sum() > 5 else "")
        raise ValueError(f"{run.study}: method {method!r}, metric {metric!r}: {int(bad.sum())} of {n} points are NaN "
                         f"or infinite (point ids {ids}; {coords}); refusing to write them as results")
    if subsets is not None and len(subsets) != n:
        raise ValueError(f"{len(subsets)} subsets for {n} points")
    columns = {
        "study": [run.study] * n,
        "dataset": [run.dataset] * n,
        "model_size": [run.model_size] * n,
        "method": [method] * n,
        "seed": [run.seed] * n,
        "k": [run.k if k is _FROM_RUN else k] * n,
        "experts": [run.experts] * n,
        "fraction": [run.fraction] * n,
        "point_id": point_ids,
        "subset": [None] * n if subsets is None else list(subsets),
        "metric": [metric] * n,
        "value": values,
        "hparams": [json.dumps(hparams or {}, sort_keys=True)] * n,
        "config_hash": [run.config_hash] * n,
        "git_sha": [git_sha()] * n,
        "device": [run.device] * n,
        "wall_time_s": [run.wall_time_s] * n,
        "phase_seconds": [None if run.phase_seconds is None else
                          json.dumps({k: round(v, 4) for k, v in run.phase_seconds.items()}, sort_keys=True)] * n,
    }
    return pl.DataFrame(columns, schema=RESULT_SCHEMA)


def write_parquet_atomic(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write `df` to `path` atomically (see harness.results.atomic): never half-written."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def read_results(path: str | os.PathLike) -> pl.DataFrame:
    """Read one Parquet file or every `*.parquet` below a folder into one frame."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"no .parquet result files under {path}")
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    if not path.exists():
        raise FileNotFoundError(f"result file {path} does not exist")
    return pl.read_parquet(path)


def summarise(
    df: pl.DataFrame,
    by: list[str],
    resamples: int = 1000,
    level: float = 0.90,
    group_resample_by: str | None = "seed",
) -> pl.DataFrame:
    """Mean and bootstrap CI of `value` per group of `by` columns.

    With `group_resample_by` (default "seed"), points are resampled within each seed and the
    resamples pooled (the paper: 5 seeds x 200 = 1000). Returns columns by + [mean, ci_low, ci_high, se, n]
    (se: the bootstrap standard error, the std of the same resampled means, as the paper's Tables 1-2).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise KeyError(f"summarise: columns {missing} not in the results table (have {df.columns})")
    out = []
    order = [c for c in ("seed", "point_id") if c in df.columns and c not in by]
    for key, part in df.group_by(by, maintain_order=True):
        part = part.sort(order) if order else part  # the same rows give the same CI, in whatever order they came
        groups = None
        if group_resample_by and group_resample_by not in by and part[group_resample_by].null_count() == 0:
            groups = part[group_resample_by].to_numpy()
        values = part["value"].to_numpy()
        means = bootstrap_means(values, groups, resamples=resamples)
        low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
        out.append({**dict(zip(by, key, strict=True)), "mean": float(values.mean()), "ci_low": float(low),
                    "ci_high": float(high), "se": float(np.std(means, ddof=1)), "n": part.height})
    return pl.DataFrame(out).sort(by)


def hparam_columns(rows: pl.DataFrame, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows with the named hparams lifted into columns of the given types (null where a row's hparams lack
    one), so that a study can summarise by them: {"space": pl.Utf8, "rank": pl.Int64}."""
    return rows.with_columns([pl.col("hparams").str.json_path_match(f"$.{name}").cast(dtype).alias(name)
                              for name, dtype in columns.items()])
