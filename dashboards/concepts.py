"""The concept-space studies' figures (S8: paper Figs 2 and 3) and table cells, drawn from their tables.

    plot_neighbourhood_cosines(points, path)   Fig 2: per test point, the mean cosine similarity in Φ̂ to its
                                               k neighbours chosen in Ψ, Ψ̂ and Φ̂ (rows: method
                                               "neighbourhood", metric "mean_cosine_phi_hat", column `space`)
    plot_relative_tv(summary, path)            Fig 3: relative TV of the Ψ̂-TTT and Φ̂-TTT probabilities at each
                                               rank, mean with its 90% bootstrap CI (rows: metric "rel_tv",
                                               columns `rank`, mean, ci_low, ci_high)
    summary_cell(table, method, metric, ...)   'mean [low, high]' of one summary row, for the printed tables
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

SPACE_STYLE = {  # neighbourhoods chosen in ...
    "psi": (r"$\Psi$ (embeddings)", "tab:blue"),
    "psi_hat": (r"$\hat\Psi$ (reconstructions)", "tab:orange"),
    "phi_hat": (r"$\hat\Phi$ (concepts)", "tab:green"),
}


def summary_cell(table: pl.DataFrame, method: str, metric: str, space: str | None = None, rank: int | None = None,
                 percent: bool = False) -> str:
    """'mean [low, high]' of this run's summary row for (method, metric, space, rank); '-' if there is none.
    A coordinate the table has no column for is not filtered on."""
    if "source" in table.columns:
        table = table.filter(pl.col("source") == "this run")
    keep = (pl.col("method") == method) & (pl.col("metric") == metric)
    for name, value in (("space", space), ("rank", rank)):
        if name in table.columns:
            keep = keep & pl.col(name).eq_missing(value)
    r = table.filter(keep)
    if r.height != 1:
        return "-"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    return f"{scale * r['mean'][0]:.2f}{unit} [{scale * r['ci_low'][0]:.2f}, {scale * r['ci_high'][0]:.2f}]"


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_neighbourhood_cosines(points: pl.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """Fig 2: histograms (as outlines, shared bins) of the per-point mean cosine in Φ̂, one per selection space."""
    part = points.filter((pl.col("method") == "neighbourhood") & (pl.col("metric") == "mean_cosine_phi_hat"))
    if part.is_empty():
        raise ValueError("no neighbourhood / mean_cosine_phi_hat rows to plot")
    values = {s: part.filter(pl.col("space") == s)["value"].to_numpy() for s in SPACE_STYLE}
    values = {s: v for s, v in values.items() if v.size}
    lo, hi = min(v.min() for v in values.values()), max(v.max() for v in values.values())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=130)
    for space, v in values.items():
        label, colour = SPACE_STYLE[space]
        ax.hist(v, bins=bins, histtype="step", lw=1.6, color=colour, label=f"{label}: mean {v.mean():.3f}")
    ax.set_xlabel(r"Mean cosine similarity in $\hat\Phi$ to the neighbours")
    ax.set_ylabel("Test points")
    ax.set_title(title or r"Neighbourhoods chosen in $\Psi$, $\hat\Psi$, $\hat\Phi$ (Fig 2)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, title="neighbours chosen in", title_fontsize=8)
    return _save(fig, path)


def plot_relative_tv(summary: pl.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """Fig 3: relTV_i by rank i with 90% bootstrap CIs (this run's rows of metric "rel_tv")."""
    part = summary.filter(pl.col("metric") == "rel_tv")
    if "source" in part.columns:
        part = part.filter(pl.col("source") == "this run")
    part = part.sort("rank")
    if part.is_empty():
        raise ValueError("no rel_tv rows to plot")
    ranks, mean = part["rank"].to_numpy(), part["mean"].to_numpy()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=130)
    ax.bar(ranks, mean, color="tab:purple", alpha=0.75, label="relative TV (90% CI)")
    ax.errorbar(ranks, mean, yerr=[mean - part["ci_low"].to_numpy(), part["ci_high"].to_numpy() - mean], fmt="none",
                ecolor="black", capsize=3, lw=1)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(ranks)
    ax.set_xlabel(r"Rank of the class under masked $\hat\Phi$-TTT")
    ax.set_ylabel(r"Relative TV, $\hat\Psi$-TTT vs $\hat\Phi$-TTT")
    ax.set_title(title or r"$\hat\Psi$-TTT vs masked $\hat\Phi$-TTT probabilities (Fig 3)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
