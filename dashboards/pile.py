"""S3's second total: tttlm's Pile-weighted bits per byte per model size and method, from the per-sequence rows.

The rows hold, per test sequence and method, "bits_per_byte" and "utf8_bytes" with the sequence's Pile subset
(harness.trials.lm); harness.eval.bits_per_byte.pile_weighted_ci does the maths (per subset a byte-weighted
mean, then tttlm's PILE_WEIGHTS over the subsets), with a bootstrap CI resampling sequences within each subset.
"""

from __future__ import annotations

import polars as pl

from harness.eval.bits_per_byte import PILE_WEIGHTS, pile_weighted_ci

PILE_WEIGHTED = "bits_per_byte_pile_weighted"  # the summary's metric name for the weighted total


def why_not_pile_weighted(rows: pl.DataFrame) -> str | None:
    """Why the rows have no Pile-weighted total (sequences without a subset, or subsets the Pile lacks); None if
    they have one."""
    bpb = rows.filter(pl.col("metric") == "bits_per_byte")
    missing = bpb["subset"].null_count()
    if missing:
        return f"{missing} of {bpb.height} rows have no Pile subset (meta.pile_set_name)"
    unknown = sorted(set(bpb["subset"].to_list()) - set(PILE_WEIGHTS))
    if unknown:
        return f"subsets {unknown[:5]} are not Pile subsets"
    return None


def pile_weighted_summary(rows: pl.DataFrame, by: tuple[str, ...] = ("model_size", "method"),
                          resamples: int = 1000, level: float = 0.90) -> pl.DataFrame | None:
    """Per group of `by`: metric PILE_WEIGHTED, mean (the weighted total), ci_low, ci_high, n (sequences) and
    weight_covered (share of tttlm's weights whose subsets the sample holds). None when why_not_pile_weighted."""
    if why_not_pile_weighted(rows) is not None:
        return None
    keys = [*by, "point_id"]
    bpb = rows.filter(pl.col("metric") == "bits_per_byte").select(*keys, "subset", "value")
    n_bytes = rows.filter(pl.col("metric") == "utf8_bytes").select(*keys, pl.col("value").alias("bytes"))
    joined = bpb.join(n_bytes, on=keys, how="inner")
    if joined.height != bpb.height:
        raise ValueError(f"{bpb.height - joined.height} bits-per-byte rows have no utf8_bytes row")
    out = []
    for key, part in joined.sort(keys).group_by(list(by), maintain_order=True):
        total, low, high, covered = pile_weighted_ci(part["value"].to_numpy(), part["bytes"].to_numpy(),
                                                     part["subset"].to_numpy(), resamples=resamples, level=level)
        out.append({**dict(zip(by, key, strict=True)), "metric": PILE_WEIGHTED, "mean": total, "ci_low": low,
                    "ci_high": high, "n": part.height, "weight_covered": covered})
    return pl.DataFrame(out).sort(list(by))
