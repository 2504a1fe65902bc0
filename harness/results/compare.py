"""Paired differences of two methods on the same test points (TTT − global), with bootstrap CIs.

Two methods evaluated on one test point are not independent samples: their difference per point has a far
smaller spread than either metric. So the difference is taken per point first, then summarised:

    d_i = value(method, point i) − value(baseline, point i)        for the points both methods scored
    mean(d), 90% CI: bootstrap over points (within each seed, as harness.results.schema.summarise)

Pairing: a method's row and the baseline's row belong to one point when they agree on seed, point_id, metric
and every coordinate (dataset, model_size, k, experts, fraction) that both methods' rows carry. A coordinate
only the method carries (TTT's k; the global model has none) stays a grouping key of the difference, so
several TTT settings are each compared with the same global rows.
"""

from __future__ import annotations

import polars as pl

from harness.results.schema import summarise

COORDINATES = ("dataset", "model_size", "k", "experts", "fraction")  # the schema's coordinates of a row


def paired_differences(rows: pl.DataFrame, method: str = "ttt", baseline: str = "global") -> pl.DataFrame:
    """Per-point differences `method − baseline`: columns [coordinates..., metric, seed, point_id, value]
    (the method's coordinates; `value` the difference). Empty when either method has no rows.

    Raises ValueError when the baseline scores a point twice under one key with different values (rows of two
    runs mixed): the pairing would be ambiguous."""
    a = rows.filter(pl.col("method") == method)
    b = rows.filter(pl.col("method") == baseline)
    if a.is_empty() or b.is_empty():
        return pl.DataFrame()
    coords = [c for c in COORDINATES if c in rows.columns]
    shared = [c for c in coords if a[c].null_count() == 0 and b[c].null_count() == 0]
    own = [c for c in coords if c not in shared and a[c].null_count() == 0]
    keys = [*shared, "metric", "seed", "point_id"]
    # the same baseline scored again with the same value (S5's trials each evaluate the one global head) is one row
    b = b.select(*keys, pl.col("value").alias("baseline")).unique(maintain_order=True)
    dupes = b.group_by(keys).len().filter(pl.col("len") > 1)
    if dupes.height:
        raise ValueError(f"{baseline!r} scores {dupes.height} point(s) more than once, with other values, under "
                         f"{keys} (e.g. {dupes.row(0, named=True)}): rows of several runs mixed; compare them one run "
                         "at a time")
    paired = a.select(*keys, *own, "value").join(b, on=keys, how="inner")
    return paired.select(*shared, *own, "metric", "seed", "point_id",
                         (pl.col("value") - pl.col("baseline")).alias("value"))


def paired_summary(rows: pl.DataFrame, method: str = "ttt", baseline: str = "global", resamples: int = 1000,
                   level: float = 0.90) -> pl.DataFrame:
    """Mean and bootstrap CI of the per-point difference `method − baseline` per group (the pairs' coordinates
    and metric): columns [coordinates..., metric, mean, ci_low, ci_high, n] (n: paired points)."""
    diff = paired_differences(rows, method, baseline)
    if diff.is_empty():
        return diff
    by = [c for c in diff.columns if c in COORDINATES] + ["metric"]
    return summarise(diff, by=by, resamples=resamples, level=level)
