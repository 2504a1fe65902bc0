"""The study runs under result folders, as the report reads them.

A *run* is one study's output folder (`--out-dir`):
- finished: `summary.parquet` (ours and the paper's rows), `points.parquet` (one row per test point, method,
  metric), `run.json` (harness.results.run_record) and any `*.md` table the study wrote (S7's table2.md);
  a search (`tune_ttt`) writes `best.parquet` instead of a summary;
- running: a sweep under `<out-dir>/sweeps/<name>/rows/` whose study has not written its tables yet (or
  is writing newer rows than its tables): its finished trials' rows, summarised here.

    runs = find_runs(["results/", "other_machine/results/"])    # sorted by study, then folder

Each run is told apart by its study config hash and git sha (`Run.label`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from harness.results.paper import SOURCE_OURS, beside_paper, ours
from harness.results.run_record import RUN_FILE, read_run
from harness.results.schema import summarise

STAT_COLUMNS = ("mean", "ci_low", "ci_high", "n", "se", "where", "source")
# the files whose change changes the report (the live server's stamp)
WATCHED = ("summary.parquet", "points.parquet", "best.parquet", RUN_FILE, "*.md")


@dataclasses.dataclass(frozen=True)
class Run:
    """One study's outputs in one folder."""

    study: str
    folder: Path  # the study's --out-dir
    root: Path  # the result folder it was found under
    summary: pl.DataFrame  # summary rows: ours (source "this run") and the paper's (source "paper")
    points: pl.DataFrame | None  # per-point rows (harness.results.schema), None when not written
    record: dict[str, Any]  # run.json (empty when absent)
    tables: tuple[tuple[str, str], ...] = ()  # (file name, markdown text) of the study's *.md tables
    best: pl.DataFrame | None = None  # a search's best.parquet
    search: pl.DataFrame | None = None  # a search's trials: config fields and their mean metrics
    running: bool = False  # summarised from the rows of a sweep still running
    trials_done: int | None = None  # finished trials of a running sweep

    @property
    def name(self) -> str:
        """The folder, relative to the result folder's parent (results/model_scaling_smoke)."""
        try:
            return str(self.folder.relative_to(self.root.parent))
        except ValueError:
            return str(self.folder)

    @property
    def config_hash(self) -> str:
        """The study config's hash (run.json); else a hash of the trials' config hashes in the rows."""
        if self.record.get("config_hash"):
            return str(self.record["config_hash"])
        trials = sorted(self.points["config_hash"].unique().drop_nulls().to_list()) if self.points is not None else []
        return hashlib.sha256(json.dumps(trials).encode()).hexdigest()[:12] if trials else "unknown"

    @property
    def git_shas(self) -> list[str]:
        if self.points is not None and "git_sha" in self.points.columns:
            return sorted(self.points["git_sha"].unique().drop_nulls().to_list())
        return [str(s) for s in self.record.get("git_shas", [])] or (
            [str(self.record["git_sha"])] if self.record.get("git_sha") else [])

    @property
    def label(self) -> str:
        """What tells runs apart in a chart: folder, config hash, git sha(s)."""
        shas = self.git_shas
        sha = shas[0][:12] + (f" +{len(shas) - 1}" if len(shas) > 1 else "") if shas else "sha unknown"
        return f"{self.name} · cfg {self.config_hash[:8]} · {sha}" + (" · running" if self.running else "")


def _study_of(points: pl.DataFrame | None, record: dict, folder: Path) -> str:
    if points is not None and "study" in points.columns:
        studies = points["study"].unique().drop_nulls().to_list()
        if len(studies) == 1:
            return str(studies[0])
    if len(record.get("studies", [])) == 1:
        return str(record["studies"][0])
    return folder.name


def with_paper_rows(summary: pl.DataFrame, study: str) -> pl.DataFrame:
    """The summary with the paper's rows: as written by finish_study, else those of harness.results.paper for
    the (method, metric) pairs this run computed (summaries written before the paper's rows were)."""
    if "source" in summary.columns and (summary["source"] != SOURCE_OURS).any():
        return summary
    return beside_paper(ours(summary), study)


def _current_rows(sweep: Path) -> list[Path]:
    """The rows files of a sweep's current run: those its trials marked ready under runs/<id>/ (the rows folder
    also keeps earlier runs' rows, of other options); a sweep written before runs were marked: all of them."""
    current = sweep / "current.json"
    if not current.exists():
        return sorted(f for f in (sweep / "rows").glob("*.parquet") if not f.name.startswith("."))
    done = sweep / "runs" / str(json.loads(current.read_text()).get("run_id"))
    keys = sorted(p.stem for p in done.glob("*.json")) if done.is_dir() else []
    return [f for f in (sweep / "rows" / f"{key}.parquet" for key in keys) if f.exists()]


def _sweep_rows(out_dir: Path) -> tuple[list[Path], list[Path]]:
    """(rows files of their current runs, sweep folders) of every sweep under `<out_dir>/sweeps/`."""
    sweeps = sorted(p.parent for p in (out_dir / "sweeps").glob("*/rows") if p.is_dir())
    return [f for s in sweeps for f in _current_rows(s)], sweeps


def search_trials_table(out_dir: Path) -> pl.DataFrame | None:
    """One row per finished search trial under `<out_dir>/sweeps/*/rows`: the trial's config fields (from its
    .meta.json), the sweep's name, and the mean of each method x metric (`ttt_error`, `global_error`, ...)."""
    files, _ = _sweep_rows(out_dir)
    out = []
    for f in files:
        meta_path = f.with_suffix(".meta.json")
        if not meta_path.exists():
            continue
        config = json.loads(meta_path.read_text()).get("config", {})
        rows = pl.read_parquet(f)
        means = rows.group_by("method", "metric").agg(pl.col("value").mean())
        out.append({"sweep": f.parent.parent.name, **{k: v for k, v in config.items() if isinstance(v, (int, float))},
                    **{f"{m}_{k}": v for m, k, v in means.iter_rows()}, "mtime": f.stat().st_mtime})
    return pl.DataFrame(out).sort("mtime").drop("mtime") if out else None


def _md_tables(folder: Path) -> tuple[tuple[str, str], ...]:
    return tuple((p.name, p.read_text()) for p in sorted(folder.glob("*.md")))


def _by_columns(points: pl.DataFrame) -> list[str]:
    """The coordinates a running sweep's rows vary in (what its summary is grouped by), then method and metric."""
    coords = [c for c in ("dataset", "model_size", "k", "experts", "fraction") if c in points.columns]
    varying = [c for c in coords if points[c].n_unique() > 1]
    return [*varying, "method", "metric"]


def load_finished(folder: Path, root: Path) -> Run:
    """The run whose tables are in `folder` (summary.parquet or best.parquet)."""
    record = read_run(folder) or {}
    points = pl.read_parquet(folder / "points.parquet") if (folder / "points.parquet").exists() else None
    study = _study_of(points, record, folder)
    best = pl.read_parquet(folder / "best.parquet") if (folder / "best.parquet").exists() else None
    summary = (with_paper_rows(pl.read_parquet(folder / "summary.parquet"), study)
               if (folder / "summary.parquet").exists() else pl.DataFrame())
    if best is not None and study == folder.name:  # a search: its trials' rows name the study
        files, _ = _sweep_rows(folder)
        study = _study_of(pl.read_parquet(files[0]), record, folder) if files else study
    return Run(study=study, folder=folder, root=root, summary=summary, points=points, record=record,
               tables=_md_tables(folder), best=best,
               search=search_trials_table(folder) if best is not None else None)


def load_running(folder: Path, root: Path) -> Run | None:
    """The run of the sweeps under `folder/sweeps/` whose study has not (re)written its tables: their finished
    trials' rows, summarised by the coordinates they vary in."""
    files, sweeps = _sweep_rows(folder)
    if not files:
        return None
    points = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    options = next((json.loads((s / "study.json").read_text()) for s in sweeps if (s / "study.json").exists()), None)
    record = {"options": options} if options is not None else {}
    study = _study_of(points, record, folder)
    summary = with_paper_rows(summarise(points, by=_by_columns(points)), study)
    search = search_trials_table(folder) if study == "tune_ttt" else None
    return Run(study=study, folder=folder, root=root, summary=summary, points=points, record=record,
               search=search, running=True, trials_done=len(files))


def _newest(paths: Sequence[Path]) -> float:
    return max((p.stat().st_mtime for p in paths), default=0.0)


def find_runs(roots: Sequence[str | Path]) -> list[Run]:
    """Every run under the result folders `roots` (each a results tree or one study's folder), sorted by
    study and folder. Raises FileNotFoundError naming a root that does not exist, or when no root holds any."""
    runs = []
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"result folder {root} does not exist")
        tables = {p.parent for name in ("summary.parquet", "best.parquet") for p in root.rglob(name)
                  if "sweeps" not in p.relative_to(root).parts}
        with_sweeps = {p.parent.parent.parent for p in root.rglob("sweeps/*/rows")}
        for folder in sorted(tables | with_sweeps):
            finished = [folder / n for n in ("summary.parquet", "best.parquet") if (folder / n).exists()]
            if finished:
                runs.append(load_finished(folder, root))
            files, _ = _sweep_rows(folder)
            if files and _newest(files) > _newest(finished):  # a sweep (re)running after the tables were written
                running = load_running(folder, root)
                if running is not None:
                    runs.append(running)
    if not runs:
        raise FileNotFoundError(f"no study outputs (summary.parquet, best.parquet or sweep rows) under "
                                f"{', '.join(map(str, roots))}")
    return sorted(runs, key=lambda r: (r.study, r.name, r.running))


def stamp(roots: Sequence[str | Path]) -> str:
    """A fingerprint of the files the report reads under `roots` (names, sizes, modification times): it
    changes when a study writes its tables or a sweep finishes a trial."""
    entries = []
    for root in map(Path, roots):
        if not root.exists():
            continue
        files = [p for pattern in WATCHED for p in root.rglob(pattern)]
        files += [p for p in root.rglob("sweeps/*/rows/*.parquet") if not p.name.startswith(".")]
        files += [*root.rglob("sweeps/*/current.json"), *root.rglob("sweeps/*/runs/*/*.json")]  # reused rows too
        for p in sorted(set(files)):
            st = p.stat()
            entries.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
