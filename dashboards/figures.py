"""The paper's figures from summarised result tables (see harness.results.summarise).

Each function takes a Polars frame with columns [x, method, mean, ci_low, ci_high] and writes a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

METHOD_STYLE = {
    "global": ("Global", "tab:blue"),
    "ttt": ("TTT", "tab:red"),
    "majority": ("Majority vote", "tab:gray"),
    "moe": ("MoE", "tab:green"),
}

LOGY_SPAN = 20.0  # plot_metric_vs: the ratio of the largest to the smallest mean past which y is logarithmic


def wants_log_y(means: np.ndarray) -> bool:
    """Whether means this far apart need a log y axis: all positive and the largest > LOGY_SPAN x the smallest."""
    return bool(means.size) and float(means.min()) > 0 and float(means.max()) > LOGY_SPAN * float(means.min())


def plot_metric_vs(
    summary: pl.DataFrame,
    x: str,
    path: str | os.PathLike,
    ylabel: str,
    xlabel: str | None = None,
    title: str | None = None,
    logx: bool = True,
    percent: bool = False,
    logy: bool | None = None,
) -> Path:
    """Lines of `mean` against `x`, one per method, with shaded CI bands (ci_low..ci_high). `logy` None: a log
    y axis when the means are positive and span more than LOGY_SPAN (a dead network's ~89 % error beside
    others' ~1 % would flatten every other line on a linear axis)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=130)
    scale = 100.0 if percent else 1.0
    for method in summary["method"].unique(maintain_order=True).to_list():
        part = summary.filter(pl.col("method") == method).sort(x)
        label, colour = METHOD_STYLE.get(method, (method, None))
        xs = part[x].to_numpy()
        ax.plot(xs, part["mean"].to_numpy() * scale, marker="o", ms=3.5, label=label, color=colour)
        ax.fill_between(xs, part["ci_low"].to_numpy() * scale, part["ci_high"].to_numpy() * scale,
                        alpha=0.2, color=colour)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels at 2x, 3x, ... collide
    if wants_log_y(summary["mean"].to_numpy()) if logy is None else logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_theory_check(table: pl.DataFrame, path: str | os.PathLike) -> Path:
    """S11: measured global and TTT squared error against d2/d1, with the §C.3 line 1 - d2/d1.

    table: summarised rows with columns d1, s, model_size (= d2), method, mean, ci_low, ci_high.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=130)
    ratio = pl.col("model_size") / pl.col("d1")
    t = table.with_columns(ratio=ratio).sort("ratio")
    for method, marker in (("global", "o"), ("ttt", "s")):
        part = t.filter(pl.col("method") == method)
        label, colour = METHOD_STYLE[method]
        ax.errorbar(part["ratio"], part["mean"], yerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]],
                    fmt=marker, ms=3.5, color=colour, label=label, capsize=2)
    xs = sorted(set(t["ratio"].to_list()))
    ax.plot(xs, [1 - x for x in xs], "k--", lw=1, label="1 − d2/d1 (§C.3)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("d2 / d1")
    ax.set_ylabel("Squared error")
    ax.set_title("Theory check (S11)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
