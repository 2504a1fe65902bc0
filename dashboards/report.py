"""Build one HTML report from every study's outputs under a results folder.

    python -m dashboards.report results/            # writes results/report.html

Each study folder (holding summary.parquet) becomes a section: its figure(s) inlined as PNG and its
summary table (mean with 90% bootstrap CI per group).
"""

from __future__ import annotations

import argparse
import base64
import html
import os
from pathlib import Path

import polars as pl

from harness.results.atomic import atomic_path


def _table_html(summary: pl.DataFrame, max_rows: int = 200) -> str:
    cols = [c for c in summary.columns if c != "n"] + (["n"] if "n" in summary.columns else [])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in summary.select(cols).head(max_rows).iter_rows():
        cells = "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = f"<p>{summary.height - max_rows} more rows in summary.parquet</p>" if summary.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def build_report(results_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write `<results_dir>/report.html` (or `out`) and return its path."""
    root = Path(results_dir)
    summaries = sorted(root.rglob("summary.parquet"))
    if not summaries:
        raise FileNotFoundError(f"no study outputs (summary.parquet) under {root}")
    sections = []
    for path in summaries:
        study = path.parent
        figures = "".join(
            f'<img alt="{html.escape(p.name)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
            for p in sorted(study.glob("*.png"))
        )
        sections.append(f"<h2>{html.escape(str(study.relative_to(root)) or study.name)}</h2>{figures}"
                        f"{_table_html(pl.read_parquet(path))}")
    page = (
        "<!doctype html><meta charset='utf-8'><title>ttt-harness report</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:48%;margin:4px}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"<h1>ttt-harness report</h1>{''.join(sections)}"
    )
    out = Path(out) if out else root / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_dir", nargs="?", default="results")
    p.add_argument("--out")
    a = p.parse_args(argv)
    print(f"wrote {build_report(a.results_dir, a.out)}")


if __name__ == "__main__":
    main()
