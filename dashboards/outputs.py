"""The end of every study: per-point rows -> Parquet, summary with bootstrap CIs -> Parquet,
a printed table and the figure (the presentation layer: `harness` computes rows, this draws them)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import polars as pl

from dashboards.figures import plot_metric_vs
from harness.results.paper import SOURCE_OURS, beside_paper, ours
from harness.results.run_record import finished_record, read_run, write_run
from harness.results.schema import summarise, write_parquet_atomic


@dataclasses.dataclass(frozen=True)
class StudyOutputs:
    points: Path
    summary: Path
    figure: Path | None
    table: pl.DataFrame
    run: Path | None = None  # run.json: the run's metadata (harness.results.run_record)

    def print_report(self, *lines: str, index: str | None = None, metric: str = "error", percent: bool = True,
                     paper: str | None = None, extra_files: tuple[Path, ...] = ()) -> None:
        """Print the study's summary: `lines` (what data, which settings), the table of `metric` by
        `index`, the paper's finding, and the files written."""
        for line in lines:
            print(line)
        if index is not None:
            print(format_table(self.table, index, metric, percent=percent))
        if paper:
            print(paper)
        files = [str(f) for f in (self.points, self.summary, self.figure, self.run, *extra_files) if f is not None]
        print(f"\nwrote {', '.join(files[:-1])} and {files[-1]}")


def finish_study(
    rows: pl.DataFrame,
    out_dir: str | os.PathLike,
    by: list[str],
    figure: dict | None = None,
    resamples: int = 1000,
    paper: dict | None = None,
    extra_summary: pl.DataFrame | None = None,
    stand_in: str | None = None,
) -> StudyOutputs:
    """Write `points.parquet`, `summary.parquet` and `run.json` under out_dir, draw the figure, return the table.

    figure: keyword arguments for dashboards.figures.plot_metric_vs (x, ylabel, ... and `metric` to
    select which metric's rows to plot; path defaults to out_dir/figure.png).
    paper: {"study": name, **coordinates} of the paper's published numbers (harness.results.paper) to
    write beside ours in the summary (column `source`: "this run" / "paper").
    extra_summary: summary rows computed otherwise (e.g. S3's Pile-weighted total), appended to the table.
    stand_in: what the data stand in for, when they are not the paper's kind (e.g. MNIST pixels for CLIP
    ImageNet embeddings); recorded in run.json beside the sweeps' record (preset, options, dates, cluster).
    """
    out_dir = Path(out_dir)
    points = write_parquet_atomic(rows, out_dir / "points.parquet")
    table = summarise(rows, by=by, resamples=resamples)
    if extra_summary is not None:
        table = pl.concat([table, extra_summary], how="diagonal_relaxed")
    if paper is not None:
        coords = dict(paper)
        table = beside_paper(table, coords.pop("study"), **coords)
    else:  # every summary says whose numbers its rows are
        table = table.with_columns(pl.lit(SOURCE_OURS).alias("source"))
    summary = write_parquet_atomic(table, out_dir / "summary.parquet")
    fig_path = None
    if figure is not None:
        figure = dict(figure)
        metric = figure.pop("metric", None)
        part = ours(table).filter(pl.col("metric") == metric) if metric else ours(table)
        fig_path = plot_metric_vs(part, path=figure.pop("path", out_dir / "figure.png"), **figure)
    try:
        previous = read_run(out_dir)
    except ValueError:  # an unreadable record is replaced
        previous = None
    run = write_run(out_dir, finished_record(previous, rows, stand_in))
    return StudyOutputs(points, summary, fig_path, table, run)


def format_table(table: pl.DataFrame, index: str, metric: str, percent: bool = True) -> str:
    """One line per `index` value, one column per method: 'mean [low, high]' (this run's rows only)."""
    part = ours(table).filter(pl.col("metric") == metric)
    methods = part["method"].unique(maintain_order=True).to_list()
    scale, unit = (100.0, "%") if percent else (1.0, "")
    header = f"{index:>12} | " + " | ".join(f"{m:^24}" for m in methods)
    lines = [f"{metric} ({'percent, ' if percent else ''}90% bootstrap CI)", header, "-" * len(header)]
    for value in sorted(part[index].unique().to_list()):
        cells = []
        for m in methods:
            r = part.filter((pl.col(index) == value) & (pl.col("method") == m))
            if r.height:
                mean, lo, hi = (r[c][0] * scale for c in ("mean", "ci_low", "ci_high"))
                cells.append(f"{mean:7.2f}{unit} [{lo:6.2f}, {hi:6.2f}]")
            else:
                cells.append(" " * 24)
        lines.append(f"{value:>12} | " + " | ".join(f"{c:^24}" for c in cells))
    return "\n".join(lines)


def format_beside_paper(table: pl.DataFrame, percent_metrics: tuple[str, ...] = ("accuracy", "error")) -> str:
    """One line per published number in `table` (rows of source "paper"): where it is printed, the paper's
    value (± its s.e.) and ours (mean [90% CI]) for the same method, metric and coordinates. Metrics whose
    name starts with one of `percent_metrics` are shown in percent. Empty when the table holds no paper rows."""
    if "source" not in table.columns:
        return ""
    paper = table.filter(pl.col("source") == "paper")
    if paper.is_empty():
        return ""
    keys = [c for c in paper.columns if c not in ("mean", "se", "where", "source", "ci_low", "ci_high", "n")
            and paper[c].null_count() < paper.height]
    mine = ours(table)
    header = f"{'where':<44} | {'method / metric':<40} | {'paper (± s.e.)':>16} | ours (90% CI)"
    lines = ["the paper's numbers beside ours", header]
    for row in paper.iter_rows(named=True):
        scale = 100.0 if row["metric"].startswith(percent_metrics) else 1.0
        unit = "%" if scale == 100.0 else ""
        same = [pl.col(k).eq_missing(row[k]) for k in keys if k in mine.columns]  # a null coordinate matches null
        match = mine.filter(pl.all_horizontal(same))
        se = f" ± {scale * row['se']:.2f}" if row.get("se") is not None else ""
        cell = (f"{scale * match['mean'][0]:.2f}{unit} [{scale * match['ci_low'][0]:.2f}, "
                f"{scale * match['ci_high'][0]:.2f}]" if match.height == 1 else "-")
        value = f"{scale * row['mean']:.2f}{unit}{se}"
        lines.append(f"{row['where'][:44]:<44} | {row['method'] + ' / ' + row['metric']:<40} | {value:>16} | {cell}")
    return "\n".join(lines)
