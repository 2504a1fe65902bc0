"""Interactive charts (plotly) of summary rows: lines with 90% CI bands, the paper's numbers overlaid.

Every chart shows values on hover, hides a method (or a run) when its legend entry is clicked, and has
buttons switching either axis between log and linear. Several runs of one study overlay in one chart: a
method keeps its colour, each run its own dash and marker.

    fig = line_chart(view, [(run, summary_rows), ...], "error")      # one chart per metric
    html = fig.to_html(full_html=False, include_plotlyjs=False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl

from dashboards.runs import STAT_COLUMNS
from dashboards.views import Reference, StudyView, fmt, is_percent, metric_label, scale

METHOD_STYLE = {  # method -> (label, colour)
    "global": ("Global", "#1f77b4"),
    "ttt": ("TTT", "#d62728"),
    "majority": ("Majority vote", "#7f7f7f"),
    "moe": ("MoE", "#2ca02c"),
    "masked_ttt": ("Masked TTT", "#9467bd"),
    "sae": ("SAE", "#8c564b"),
}
PALETTE = ("#17becf", "#bcbd22", "#e377c2", "#ff7f0e", "#8c564b", "#9467bd")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x")
PAPER_COLOUR = "#111111"
HOVER = "%{fullData.name}<br>%{x}<br>%{customdata}<extra></extra>"


def method_style(method: str) -> tuple[str, str]:
    """(label, colour) of a method; unknown methods get a colour from the palette by name."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    return method.replace("_", " "), PALETTE[sum(map(ord, method)) % len(PALETTE)]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def series_columns(view: StudyView, table: pl.DataFrame) -> list[str]:
    """The columns that split a method's lines: the view's, else the coordinates that take several values at one
    x for one method and metric (TTT's k in S1 changes with the model size, one k per size: not a series)."""
    if view.series is not None:
        return [c for c in view.series if c in table.columns]
    skip = {view.x, "method", "metric", "seed", "point_id", *STAT_COLUMNS}
    keys = [c for c in (view.x, "method", "metric") if c is not None and c in table.columns]
    out = []
    for c in table.columns:
        if c in skip or table[c].drop_nulls().n_unique() < 2:
            continue
        if not keys or table.group_by(keys).agg(pl.col(c).n_unique()).get_column(c).max() > 1:
            out.append(c)
    return out


def _series_label(row: dict[str, Any], cols: Sequence[str]) -> str:
    return " ".join(f"{c}={row[c]}" for c in cols if row.get(c) is not None)


def _axis_buttons(logx: bool, logy: bool, has_x: bool) -> list[dict]:
    """Two button rows: x log / linear (line charts) and y log / linear; the active one shown pressed."""
    menus = []
    axes = (("xaxis", logx, 0.0), ("yaxis", logy, 0.5)) if has_x else (("yaxis", logy, 0.0),)
    for axis, log, x in axes:
        menus.append(dict(
            type="buttons", direction="right", x=x, y=1.16, xanchor="left", yanchor="top", showactive=True,
            active=0 if log else 1, pad={"r": 4, "t": 0}, font={"size": 11},
            buttons=[dict(label=f"{axis[0]}: log", method="relayout", args=[{f"{axis}.type": "log"}]),
                     dict(label=f"{axis[0]}: linear", method="relayout", args=[{f"{axis}.type": "linear"}])]))
    return menus


def _layout(fig: go.Figure, title: str, xlabel: str, ylabel: str, logx: bool, logy: bool, has_x: bool) -> go.Figure:
    fig.update_layout(
        title={"text": title, "y": 0.98, "x": 0.01, "xanchor": "left", "font": {"size": 13}},
        xaxis={"title": {"text": xlabel}, "type": "log" if (logx and has_x) else None},
        yaxis={"title": {"text": ylabel}, "type": "log" if logy else None},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "font": {"size": 11}},
        margin={"l": 60, "r": 20, "t": 80, "b": 40}, height=460, template="plotly_white",
        updatemenus=_axis_buttons(logx, logy, has_x), hovermode="closest",
    )
    return fig


def _ci_text(mean: float, low: float | None, high: float | None, n: Any, metric: str) -> str:
    unit = "%" if is_percent(metric) else ""
    ci = f" [{fmt(low, metric)}, {fmt(high, metric)}]" if low is not None and high is not None else ""
    return f"{fmt(mean, metric)}{unit}{ci} (90% CI), n={n}"


def line_chart(view: StudyView, tables: Sequence[tuple[str, pl.DataFrame]], metric: str,
               paper: pl.DataFrame | None = None, references: Sequence[Reference] = ()) -> go.Figure:
    """`metric` against view.x: per run (label, its summary rows of this metric, already prepared), one line
    per method and series with its CI band; rows without an x (a model that does not depend on it, e.g. the
    global model beside E experts) as a flat line and band across the axis; the paper's rows with an x as
    black stars (± its s.e.); the paper's predictions (`references`) dashed."""
    assert view.x is not None
    k = scale(metric)
    fig = go.Figure()
    xs_all = sorted({x for _, t in tables for x in t[view.x].drop_nulls().to_list()})
    for r, (label, table) in enumerate(tables):
        cols = series_columns(view, table)
        for key, part in table.group_by(["method", *cols], maintain_order=True):
            method, row0 = str(key[0]), part.row(0, named=True)
            name, colour = method_style(method)
            series = _series_label(row0, cols)
            group = f"{label}|{method}|{series}"
            full = " · ".join(p for p in (name, series, label if len(tables) > 1 else "") if p)
            if part[view.x].null_count() == part.height:  # no x: the same value at every x
                if not xs_all:
                    continue
                row = part.row(0, named=True)
                xs = [xs_all[0], xs_all[-1]]
                ys, lo, hi = [row["mean"] * k] * 2, [row["ci_low"] * k] * 2, [row["ci_high"] * k] * 2
                custom = [_ci_text(row["mean"], row["ci_low"], row["ci_high"], row["n"], metric)] * 2
                mode = "lines"
            else:
                part = part.filter(pl.col(view.x).is_not_null()).sort(view.x)
                xs = part[view.x].to_list()
                ys = (part["mean"] * k).to_list()
                lo, hi = (part["ci_low"] * k).to_list(), (part["ci_high"] * k).to_list()
                custom = [_ci_text(m, a, b, n, metric) for m, a, b, n in
                          part.select("mean", "ci_low", "ci_high", "n").iter_rows()]
                mode = "lines+markers"
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], mode="lines", fill="toself",
                                     fillcolor=_rgba(colour, 0.15),
                                     line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=group,
                                     name=f"{full} (90% CI)"))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode=mode, name=full, legendgroup=group, customdata=custom,
                                     hovertemplate=HOVER, line={"color": colour, "dash": DASHES[r % len(DASHES)]},
                                     marker={"symbol": SYMBOLS[r % len(SYMBOLS)], "size": 7}))
    if paper is not None and view.x in paper.columns:
        on_axis = paper.filter((pl.col("metric") == metric) & pl.col(view.x).is_not_null())
        for row in on_axis.iter_rows(named=True):
            se = row.get("se")
            fig.add_trace(go.Scatter(
                x=[row[view.x]], y=[row["mean"] * k], mode="markers", name=f"paper: {method_style(row['method'])[0]}"
                f" ({row['where']})", marker={"symbol": "star", "size": 13, "color": PAPER_COLOUR},
                error_y={"type": "data", "array": [se * k]} if se is not None else None,
                customdata=[f"{fmt(row['mean'], metric)} ± {fmt(se, metric)} (paper)"], hovertemplate=HOVER))
    for ref in references:
        if ref.metric == metric:
            fig.add_trace(go.Scatter(x=ref.x, y=[y * k for y in ref.y], mode="lines", name=ref.name,
                                     line={"color": PAPER_COLOUR, "dash": "dash", "width": 1.5},
                                     customdata=[f"{fmt(y, metric)} (prediction)" for y in ref.y],
                                     hovertemplate=HOVER))
    return _layout(fig, f"{metric_label(metric)} vs {view.xlabel or view.x}", view.xlabel or view.x,
                   metric_label(metric), view.logx, view.logy, has_x=True)


def bar_chart(view: StudyView, tables: Sequence[tuple[str, pl.DataFrame]], metrics: Sequence[str],
              paper: pl.DataFrame | None = None) -> go.Figure:
    """Tables of the paper (no x axis): one bar per method x metric (and series) per run with its 90% CI, and
    the paper's numbers as bars (± its s.e.), one trace per place in the paper. `metrics` share one unit."""
    fig = go.Figure()
    cols = sorted({c for _, t in tables for c in series_columns(view, t)})

    def category(row: dict[str, Any]) -> str:
        series = _series_label(row, [c for c in cols if c in row])
        return " · ".join(p for p in (method_style(row["method"])[0], row["metric"], series) if p)

    for label, table in tables:
        part = table.filter(pl.col("metric").is_in(list(metrics)))
        if part.is_empty():
            continue
        rows = list(part.iter_rows(named=True))
        k = [scale(r["metric"]) for r in rows]
        fig.add_trace(go.Bar(
            x=[category(r) for r in rows], y=[r["mean"] * s for r, s in zip(rows, k, strict=True)], name=label,
            error_y={"type": "data", "symmetric": False,
                     "array": [(r["ci_high"] - r["mean"]) * s for r, s in zip(rows, k, strict=True)],
                     "arrayminus": [(r["mean"] - r["ci_low"]) * s for r, s in zip(rows, k, strict=True)]},
            customdata=[_ci_text(r["mean"], r["ci_low"], r["ci_high"], r["n"], r["metric"]) for r in rows],
            hovertemplate=HOVER))
    if paper is not None and not paper.is_empty():
        part = paper.filter(pl.col("metric").is_in(list(metrics)))
        for (where,), rows_df in part.group_by(["where"], maintain_order=True):
            rows = list(rows_df.iter_rows(named=True))
            fig.add_trace(go.Bar(
                x=[category(r) for r in rows], y=[r["mean"] * scale(r["metric"]) for r in rows], name=f"paper: {where}",
                marker={"color": PAPER_COLOUR, "opacity": 0.55},
                error_y={"type": "data", "array": [(r["se"] or 0.0) * scale(r["metric"]) for r in rows]},
                customdata=[f"{fmt(r['mean'], r['metric'])} ± {fmt(r['se'], r['metric'])} (paper)" for r in rows],
                hovertemplate=HOVER))
    fig.update_layout(barmode="group", bargap=0.35)
    ylabel = metric_label(metrics[0]) if len(metrics) == 1 else ("Percent" if is_percent(metrics[0]) else "Value")
    return _layout(fig, f"{ylabel}: this run beside the paper ({view.source})" if view.source else ylabel, "",
                   ylabel, False, False, has_x=False)


def difference_chart(view: StudyView, tables: Sequence[tuple[str, pl.DataFrame]], metric: str,
                     method: str = "ttt", baseline: str = "global") -> go.Figure:
    """The paired difference `method − baseline` of `metric` on the same test points, per run, with its 90% CI
    (error bars), against view.x when the differences have one, else as bars; zero dashed."""
    k = scale(metric)
    name = f"{method_style(method)[0]} − {method_style(baseline)[0]}"
    fig = go.Figure()
    has_x = view.x is not None and all(view.x in t.columns and t[view.x].null_count() == 0 for _, t in tables)
    for r, (label, table) in enumerate(tables):
        cols = [c for c in series_columns(view, table) if c != view.x]
        groups = table.group_by(cols, maintain_order=True) if cols else [((), table)]
        for _, part in groups:
            part = part.sort(view.x) if has_x else part
            series = _series_label(part.row(0, named=True), cols) if cols else ""
            trace_name = " · ".join(p for p in (name, series, label if len(tables) > 1 else "") if p)
            ys = (part["mean"] * k).to_list()
            err = {"type": "data", "symmetric": False, "array": ((part["ci_high"] - part["mean"]) * k).to_list(),
                   "arrayminus": ((part["mean"] - part["ci_low"]) * k).to_list()}
            custom = [_ci_text(m, a, b, n, metric) + " paired points" for m, a, b, n in
                      part.select("mean", "ci_low", "ci_high", "n").iter_rows()]
            if has_x:
                fig.add_trace(go.Scatter(x=part[view.x].to_list(), y=ys, mode="lines+markers", name=trace_name,
                                         error_y=err, customdata=custom, hovertemplate=HOVER,
                                         line={"dash": DASHES[r % len(DASHES)]},
                                         marker={"symbol": SYMBOLS[r % len(SYMBOLS)], "size": 7}))
            else:
                fig.add_trace(go.Bar(x=[trace_name], y=ys, name=trace_name, error_y=err, customdata=custom,
                                     hovertemplate=HOVER))
    fig.add_hline(y=0, line={"color": "#555", "dash": "dot", "width": 1})
    fig.update_layout(bargap=0.6)
    unit = " (percentage points)" if is_percent(metric) else ""
    return _layout(fig, f"{name} on the same test points: {metric_label(metric).replace(' (%)', '')}",
                   (view.xlabel or view.x or "") if has_x else "", f"{name}{unit}", view.logx, False, has_x=has_x)


def search_chart(view: StudyView, searches: Sequence[tuple[str, pl.DataFrame]], metric: str = "ttt_error") -> go.Figure:
    """A hyperparameter search: each trial's validation `metric` against its view.x (the TTT learning rate),
    one colour per search (sweep), its other fields on hover; the best trial of each search starred."""
    assert view.x is not None
    fig = go.Figure()
    base = metric.split("_", 1)[1] if "_" in metric else metric
    k = scale(base)
    for r, (label, trials) in enumerate(searches):
        if metric not in trials.columns or view.x not in trials.columns:
            continue
        for i, ((sweep,), part) in enumerate(trials.group_by(["sweep"], maintain_order=True)):
            extra = [c for c in ("ttt_steps", "ttt_k", "model_size") if c in part.columns]
            custom = [f"{fmt(v, base)}{'%' if is_percent(base) else ''} · " + " ".join(f"{c}={row[c]}" for c in extra)
                      for v, row in zip(part[metric].to_list(), part.iter_rows(named=True), strict=True)]
            colour = PALETTE[(i + r) % len(PALETTE)]
            name = f"{sweep}" + (f" · {label}" if len(searches) > 1 else "")
            fig.add_trace(go.Scatter(x=part[view.x].to_list(), y=(part[metric] * k).to_list(), mode="markers",
                                     name=name, legendgroup=name, marker={"color": colour, "size": 8,
                                                                          "symbol": SYMBOLS[r % len(SYMBOLS)]},
                                     customdata=custom, hovertemplate=HOVER))
            best = part.sort(metric).row(0, named=True)
            fig.add_trace(go.Scatter(x=[best[view.x]], y=[best[metric] * k], mode="markers", legendgroup=name,
                                     name=f"best of {name}", marker={"symbol": "star", "size": 15, "color": colour,
                                                                     "line": {"color": "#000", "width": 1}},
                                     customdata=[custom[part[metric].to_list().index(best[metric])]],
                                     hovertemplate=HOVER))
    label = f"Validation {metric_label(base)}"
    return _layout(fig, f"{label} of each search trial vs {view.xlabel}", view.xlabel, label, view.logx, False,
                   has_x=True)
