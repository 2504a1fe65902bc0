"""One self-contained, interactive HTML report of every study run under one or more result folders.

    ttt-harness report results/                     # writes results/report.html (= python -m dashboards.report)
    ttt-harness report results/ other/results/ --out both.html   # runs of several folders overlaid
    ttt-harness report --serve results/             # http://127.0.0.1:8000, refreshed while a sweep runs

A section per study (S1 ... S11, the TTT search, and any other study found), in the paper's order:
- the run's metadata: preset (--paper / --smoke-test / embedded default), study config hash, git sha, dates,
  devices, wall time, epochs, stand-in data (run.json, harness.results.run_record);
- interactive charts of the paper's figure (plotly: values on hover, a method hidden by clicking its legend
  entry, log / linear axes), with 90% bootstrap CI bands, the paper's published numbers and predictions
  overlaid; several runs of the study (other folders, other configs) overlaid in the same charts, told apart by
  config hash and git sha;
- the TTT − global difference paired on the same test points, with its bootstrap CI (harness.results.compare);
- the tables: ours per metric (percent for errors and accuracies, as the charts), the paper's numbers beside
  ours, the paired differences, a study's own tables (S7's table2.md) and a search's best.parquet.

The page works offline: plotly's JavaScript is inlined (no CDN). The numbers behind it are embedded as JSON
(`<script id="report-data" type="application/json">`).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl

from dashboards.interactive import bar_chart, difference_chart, line_chart, method_style, search_chart
from dashboards.runs import STAT_COLUMNS, Run, find_runs, stamp
from dashboards.views import ORDER, StudyView, fmt, is_percent, metric_label, metric_order, view_for
from harness.results.atomic import atomic_path
from harness.results.compare import COORDINATES, paired_summary
from harness.results.paper import SOURCE_PAPER, ours
from harness.results.run_record import now_iso

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1d2a3a;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8d3e0;font-size:13px}
nav{padding:8px 28px;background:#eef1f5;border-bottom:1px solid #dde;font-size:13px;position:sticky;top:0;z-index:5}
nav a{margin-right:14px;color:#1d4e89;text-decoration:none}
main{padding:8px 28px 40px}section.study{background:#fff;border:1px solid #e2e5ea;border-radius:6px;margin:18px 0;
padding:10px 20px 18px}section h2{font-size:19px;margin:8px 0}section h2 small{font-weight:normal;color:#667}
h3{font-size:15px;margin:18px 0 6px;color:#334}
.runs{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #dfe3ea;border-radius:5px;padding:6px 12px;
font-size:12.5px;background:#fcfcfd;min-width:320px;flex:1}.card h4{margin:2px 0 6px;font-size:13px}
.card dl{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:1px 12px;margin:0}
.card dt{color:#667}.card dd{margin:0}
.warn{color:#a15c00;font-weight:600}.running{color:#0a7d32;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
.chart{border:1px solid #eceef2;border-radius:4px;min-height:460px;min-width:0;overflow:hidden}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0 10px}td,th{border:1px solid #d8dbe0;padding:3px 8px;
text-align:right}th{background:#f1f3f6}td.l,th.l{text-align:left}code{font-size:12px}
details summary{cursor:pointer;color:#1d4e89;font-size:13px;margin:6px 0}
"""

ERROR_HOOK = ("window.__reportErrors=[];window.addEventListener('error',function(e){"
              "window.__reportErrors.push(String(e.message||e));});")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first `left` columns left-aligned (labels), the rest right-aligned (numbers)."""
    def cell(tag: str, i: int, v: Any) -> str:
        return f"<{tag}{' class=l' if i < left else ''}>{_e(v)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(row: dict[str, Any], metric: str) -> str:
    return f"{fmt(row['mean'], metric)} [{fmt(row['ci_low'], metric)}, {fmt(row['ci_high'], metric)}]"


def _preset(record: dict[str, Any]) -> str:
    preset = record.get("preset")
    if preset is None:
        return "unknown (not parsed from a command line here)" if record else "unknown (no run.json)"
    name = "embedded default" if preset == "default" else "--" + str(preset).replace("_", "-")
    given = record.get("options_given") or []
    return name + (f" with {' '.join(given)}" if given else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _epochs(options: dict[str, Any]) -> str | None:
    for key in ("epochs", "ttt.epochs"):
        node: Any = options
        for part in key.split("."):
            node = node.get(part, "absent") if isinstance(node, dict) else "absent"
        if node != "absent":
            return "the paper's tables" if node is None else str(node)
    return None


def run_card(run: Run) -> str:
    """The run's metadata as a definition list."""
    rec = run.record
    sweeps = rec.get("sweeps", {})
    clusters = [s.get("cluster", {}) for s in sweeps.values()]
    devices = list(rec.get("devices") or (sorted(run.points["device"].unique().drop_nulls().to_list())
                                          if run.points is not None and "device" in run.points.columns else []))
    hardware = "; ".join(sorted({f"{c.get('nodes')} node(s), {c.get('CPU', 0):g} CPU, {c.get('GPU', 0):g} GPU"
                                 + (f" ({', '.join(c['accelerators'])})" if c.get("accelerators") else "")
                                 for c in clusters if c}))
    started = min((s.get("started", "") for s in sweeps.values()), default="")
    sweep_time = sum(s.get("wall_time_s") or 0.0 for s in sweeps.values()) if sweeps else None
    trials = sum(s.get("trials") or 0 for s in sweeps.values()) if sweeps else None
    reused = sum(s.get("reused") or 0 for s in sweeps.values()) if sweeps else None
    if run.running:
        status = f"<span class=running>running: {run.trials_done} trial(s) finished so far</span>"
    else:
        status = _e(f"finished {rec.get('finished', '(date unknown: no run.json)')}")
    if rec.get("stand_in"):
        stand_in = f"<span class=warn>yes: {_e(rec['stand_in'])}</span>"
    elif "stand_in" in rec:
        stand_in = "no (the paper's kind of data)"
    else:
        stand_in = "unknown"
    wall = f"{_duration(sweep_time)} sweep(s)"
    if rec.get("trial_wall_time_s"):
        wall += f", {_duration(rec['trial_wall_time_s'])} trial compute"
    datasets = rec.get("datasets") or (sorted(run.points["dataset"].unique().drop_nulls().to_list())
                                       if run.points is not None else [])
    items = [
        ("status", status), ("folder", f"<code>{_e(run.folder)}</code>"),
        ("preset", _e(_preset(rec))), ("config hash", f"<code>{_e(run.config_hash)}</code> (study options)"),
        ("git sha", _e(", ".join(run.git_shas) or "unknown")),
        ("started", _e(started or "–")),
        ("device", _e(", ".join(devices) or "–") + (f" · {_e(hardware)}" if hardware else "")),
        ("wall time", _e(wall)),
        ("trials", _e(f"{trials} ({reused} reused from cache)" if trials is not None else "–")),
        ("data", _e(", ".join(datasets) or "–")), ("stand-in data", stand_in),
    ]
    epochs = _epochs(rec.get("options") or {})
    if epochs is not None:
        items.append(("epochs", _e(epochs)))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    options = json.dumps(rec.get("options"), indent=1, sort_keys=True) if rec.get("options") else None
    more = f"<details><summary>options</summary><pre>{_e(options)}</pre></details>" if options else ""
    return f"<div class=card><h4>{_e(run.label)}</h4><dl>{body}</dl>{more}</div>"


class _Charts:
    """Numbers the chart divs of one page, so each gets a unique id."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: Any, kind: str, study: str) -> str:
        self.count += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{self.count}",
                          default_width="100%", default_height="460px",
                          config={"displaylogo": False, "responsive": True})
        return f'<div class="chart" data-kind="{kind}" data-study="{_e(study)}">{div}</div>'


def _main_table(view: StudyView, tables: list[tuple[str, pl.DataFrame]], metric: str, multi: bool) -> str:
    """Ours of one metric: a row per (run, series, x), a column per method: mean [90% CI] in display units."""
    from dashboards.interactive import series_columns

    methods = sorted({m for _, t in tables for m in t["method"].unique().to_list()},
                     key=lambda m: ("global", "ttt", "majority", "moe").index(m) if m in ("global", "ttt", "majority",
                                                                                           "moe") else 9)
    cols = sorted({c for _, t in tables for c in series_columns(view, t)})
    x = view.x if view.x and any(view.x in t.columns for _, t in tables) else None
    keys = [*cols, *([x] if x else [])]
    rows = []
    for label, t in tables:
        groups = t.group_by(keys, maintain_order=True) if keys else [((), t)]
        for key, part in sorted(groups, key=lambda g: tuple((v is None, v) for v in g[0])):
            cells = {r["method"]: _ci(r, metric) for r in part.iter_rows(named=True)}
            n = part["n"].max()
            rows.append([*([label] if multi else []), *["–" if v is None else v for v in key],
                         *[cells.get(m, "–") for m in methods], n])
    header = [*(["run"] if multi else []), *keys, *[method_style(m)[0] for m in methods], "n"]
    unit = "percent, " if is_percent(metric) else ""
    return (f"<h3>{_e(metric_label(metric))}: mean [90% bootstrap CI] ({unit}this run)</h3>"
            + _table(header, rows, left=(1 if multi else 0) + len(keys)))


def _coords(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in (*STAT_COLUMNS, "method", "metric") and v is not None}


def _paper_table(paper: pl.DataFrame, tables: list[tuple[str, pl.DataFrame]]) -> str:
    """The paper's numbers beside ours: one row per published number, a column per run (same method, metric and
    coordinates)."""
    rows = []
    for p in paper.iter_rows(named=True):
        coords = _coords(p)
        cells = []
        for _, t in tables:
            match = t.filter((pl.col("method") == p["method"]) & (pl.col("metric") == p["metric"]))
            for k, v in coords.items():  # a coordinate our rows do not carry (all null) matches anything
                if k in match.columns and match[k].null_count() < match.height:
                    match = match.filter(pl.col(k) == v)
            cells.append(_ci(match.row(0, named=True), p["metric"]) if match.height == 1 else "–")
        se = f" ± {fmt(p['se'], p['metric'])}" if p.get("se") is not None else ""
        unit = " (%)" if is_percent(p["metric"]) else ""
        rows.append([p["where"], method_style(p["method"])[0], p["metric"] + unit,
                     " ".join(f"{k}={v}" for k, v in coords.items()) or "–", fmt(p["mean"], p["metric"]) + se, *cells])
    header = ["where in the paper", "method", "metric", "coordinates", "paper (± s.e.)",
              *[f"ours: {label}" for label, _ in tables]]
    return "<h3>The paper's numbers beside ours</h3>" + _table(header, rows, left=4)


def _difference_table(diffs: list[tuple[str, pl.DataFrame]], multi: bool) -> str:
    rows = []
    for label, d in diffs:
        keys = [c for c in COORDINATES if c in d.columns]
        for r in d.iter_rows(named=True):
            unit = " (pp)" if is_percent(r["metric"]) else ""
            rows.append([*([label] if multi else []), r["metric"] + unit, *[r[k] for k in keys],
                         _ci(r, r["metric"]), r["n"]])
    keys = [c for c in COORDINATES if any(c in d.columns for _, d in diffs)]
    header = [*(["run"] if multi else []), "metric", *keys, "TTT − global [90% CI]", "paired points"]
    return ("<h3>TTT − global, paired on the same test points (per-point differences, bootstrap over points within "
            "seeds)</h3>" + _table(header, rows, left=(1 if multi else 0) + 1 + len(keys)))


def _markdown_table(text: str) -> str:
    """A Markdown pipe table as HTML (other lines as preformatted text)."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("|")]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
    if len(rows) < 2:
        return f"<pre>{_e(text)}</pre>"
    return _table(rows[0], rows[1:])


def _jsonable(df: pl.DataFrame | None) -> list[dict[str, Any]]:
    if df is None or df.is_empty():
        return []
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.iter_rows(named=True)]


def study_section(study: str, runs: list[Run], charts: _Charts) -> tuple[str, dict[str, Any]]:
    """The section of one study (all its runs overlaid) and the numbers behind it."""
    summaries = [r.summary for r in runs if not r.summary.is_empty()]
    view = view_for(study, summaries[0] if summaries else pl.DataFrame())
    multi = len(runs) > 1
    labels = [r.label for r in runs]
    title = f"{view.code} — {view.title}" if view.code else view.title
    source = f"paper: {view.source}; " if view.source else ""
    parts = [f'<section class="study" id="study-{_e(study)}" data-study="{_e(study)}">'
             f"<h2>{_e(title)} <small>({_e(source)}study <code>{_e(study)}</code>, {len(runs)} run(s))</small></h2>",
             "<div class=runs>" + "".join(run_card(r) for r in runs) + "</div>"]
    data: dict[str, Any] = {"view": {"code": view.code, "x": view.x}, "runs": []}
    figs: list[str] = []
    tables_html: list[str] = []

    searches = [(label, r.search) for label, r in zip(labels, runs, strict=True) if r.search is not None]
    if searches:
        figs.append(charts.html(search_chart(view, searches), "search", study))
    ours_tables = [(label, view.prepare(ours(r.summary))) for label, r in zip(labels, runs, strict=True)
                   if not r.summary.is_empty()]
    paper_rows = [r.summary.filter(pl.col("source") == SOURCE_PAPER) for r in runs
                  if "source" in r.summary.columns]
    paper = pl.concat(paper_rows, how="diagonal_relaxed").unique(maintain_order=True) if paper_rows else None
    paper = paper if paper is not None and not paper.is_empty() else None
    if ours_tables:
        metrics = metric_order(sorted({m for _, t in ours_tables for m in t["metric"].unique().to_list()}))
        on_axis = view.x is not None and any(view.x in t.columns and t[view.x].drop_nulls().len()
                                             for _, t in ours_tables)
        if on_axis:
            refs = view.references(pl.concat([t for _, t in ours_tables], how="diagonal_relaxed")) \
                if view.references else []
            for m in metrics:
                per_metric = [(label, t.filter(pl.col("metric") == m)) for label, t in ours_tables]
                figs.append(charts.html(line_chart(view, per_metric, m, paper, refs), "line", study))
        else:
            percent = [m for m in metrics if is_percent(m)]
            for group in ([percent] if percent else []) + [[m] for m in metrics if not is_percent(m)]:
                figs.append(charts.html(bar_chart(view, ours_tables, group, paper), "bar", study))
        for m in metrics:
            per_metric = [(label, t.filter(pl.col("metric") == m)) for label, t in ours_tables]
            tables_html.append(_main_table(view, [(lb, t) for lb, t in per_metric if not t.is_empty()], m, multi))
    if paper is not None:
        tables_html.append(_paper_table(paper, ours_tables))

    diffs, unpaired = [], []
    for label, r in zip(labels, runs, strict=True):
        try:
            diff = paired_summary(r.points) if r.points is not None else pl.DataFrame()
        except ValueError as e:  # rows that cannot be paired point by point: said, not guessed
            diff = pl.DataFrame()
            unpaired.append(f"<p class=warn>{_e(label)}: no paired TTT − global difference: {_e(e)}</p>")
        if not diff.is_empty():
            diffs.append((label, view.prepare(diff)))
        data["runs"].append({"label": label, "folder": str(r.folder), "config_hash": r.config_hash,
                             "git_shas": r.git_shas, "running": r.running, "record": r.record,
                             "summary": _jsonable(r.summary), "difference": _jsonable(diff),
                             "best": _jsonable(r.best)})
    if diffs:
        for m in metric_order(sorted({m for _, d in diffs for m in d["metric"].unique().to_list()})):
            per_metric = [(label, d.filter(pl.col("metric") == m)) for label, d in diffs]
            per_metric = [(lb, d) for lb, d in per_metric if not d.is_empty()]
            figs.append(charts.html(difference_chart(view, per_metric, m), "difference", study))
        tables_html.append(_difference_table(diffs, multi))
    tables_html += unpaired

    for label, r in zip(labels, runs, strict=True):
        if r.best is not None:
            tables_html.append(f"<h3>Best trial per search ({_e(label)}): best.parquet</h3>"
                               + _table(r.best.columns, [[fmt(v, "x") if isinstance(v, float) else v for v in row]
                                                         for row in r.best.iter_rows()], left=0))
        for name, text in r.tables:
            tables_html.append(f"<h3>{_e(name)} ({_e(label)})</h3>" + _markdown_table(text))
    if figs:
        parts.append("<div class=charts>" + "".join(figs) + "</div>")
    parts += tables_html
    parts.append("</section>")
    return "".join(parts), data


def _poll_script(interval: float, current: str) -> str:
    """Reload the page when the server's stamp of the result files changes (a trial or a study finished)."""
    return ("<script>(function(){var s=" + json.dumps(current) + ";setInterval(function(){"
            "fetch('/stamp',{cache:'no-store'}).then(function(r){return r.text();}).then(function(t){"
            "if(t!==s){location.reload();}}).catch(function(){});}," + str(int(interval * 1000)) + ");})();</script>")


def build_page(roots: Sequence[str | Path], live: float | None = None, current: str = "") -> str:
    """The report's HTML for the runs under `roots`; with `live` (seconds), a script polling the server's
    /stamp that reloads the page when it changes."""
    from plotly.offline import get_plotlyjs

    runs = find_runs(roots)
    by_study: dict[str, list[Run]] = {}
    for r in runs:
        by_study.setdefault(r.study, []).append(r)
    studies = sorted(by_study, key=lambda s: (ORDER.get(s, len(ORDER)), s))
    charts = _Charts()
    sections, data = [], {}
    for study in studies:
        section, numbers = study_section(study, by_study[study], charts)
        sections.append(section)
        data[study] = numbers
    nav = "".join(f'<a href="#study-{_e(s)}">{_e(view_for(s, pl.DataFrame()).code or s)}</a>' for s in studies)
    where = ", ".join(str(Path(r)) for r in roots)
    live_note = f" · live: refreshed when results change (every {live:g} s)" if live else ""
    payload = json.dumps({"roots": [str(r) for r in roots], "built": now_iso(), "studies": data},
                         default=str).replace("</", "<\\/")
    return (
        "<!doctype html><html lang=en><head><meta charset='utf-8'><title>ttt-harness report</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style>"
        f"<script>{ERROR_HOOK}</script><script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body data-charts='{charts.count}'><header><h1>ttt-harness report</h1>"
        f"<p>{len(studies)} studies, {len(runs)} run(s) from {_e(where)} · built {_e(now_iso())}{_e(live_note)} · "
        "values are this run's means with 90% bootstrap CIs; click a legend entry to hide it, double-click to "
        "show it alone</p></header>"
        f"<nav>{nav}</nav><main>{''.join(sections)}</main>"
        f"<script id='report-data' type='application/json'>{payload}</script>"
        + (_poll_script(live, current) if live else "") + "</body></html>")


def build_report(roots: str | Path | Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of the runs under `roots` to `out` (default: <first root>/report.html); its path."""
    folders = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    page = build_page(folders)
    path = Path(out) if out else folders[0] / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def _waiting_page(roots: Sequence[str | Path], reason: str, interval: float, current: str) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ttt-harness report</title></head><body>"
            f"<p>{_e(reason)}; this page reloads when results appear under {_e(', '.join(map(str, roots)))}.</p>"
            + _poll_script(interval, current) + "</body></html>")


def make_server(roots: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000,
                interval: float = 5.0) -> ThreadingHTTPServer:
    """An HTTP server of the live report: `/` the page (rebuilt when the result files change), `/stamp` their
    fingerprint (the page polls it every `interval` seconds and reloads when it changes)."""
    cache: dict[str, str] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: str, kind: str) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/stamp":
                self._send(stamp(roots), "text/plain")
            elif path in ("/", "/index.html"):
                with lock:
                    current = stamp(roots)
                    if current not in cache:
                        try:
                            page = build_page(roots, live=interval, current=current)
                        except FileNotFoundError as e:
                            page = _waiting_page(roots, str(e), interval, current)
                        cache.clear()
                        cache[current] = page
                    self._send(cache[current], "text/html")
            else:
                self.send_error(404, "the report is at /")

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per page build is printed
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ttt-harness report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", default=["results"], help="result folders (default: results)")
    p.add_argument("--out", help="the HTML file to write (default: <first folder>/report.html)")
    p.add_argument("--serve", action="store_true", help="serve the report, refreshed while results change")
    p.add_argument("--host", default="127.0.0.1", help="--serve: the address to listen on")
    p.add_argument("--port", type=int, default=8000, help="--serve: the port (0: any free one)")
    p.add_argument("--interval", type=float, default=5.0, help="--serve: seconds between the page's checks")
    a = p.parse_args(argv)
    missing = [r for r in a.results if not Path(r).exists()]
    if missing:
        print(f"error: result folder(s) {', '.join(missing)} do not exist", file=sys.stderr)
        return 2
    if a.interval <= 0:
        print(f"error: --interval must be > 0, got {a.interval}", file=sys.stderr)
        return 2
    if a.serve:
        server = make_server(a.results, a.host, a.port, a.interval)
        host, port = str(server.server_address[0]), int(server.server_address[1])
        print(f"serving the report of {', '.join(a.results)} at http://{host}:{port}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0
    try:
        path = build_report(a.results, a.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
