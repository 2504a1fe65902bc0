"""The report's parts on hand-made outputs (no Ray, no training): the paper's tables beside ours, a sweep still
running, a search's best trials, an unknown study, and the pairing of TTT with the global model per test point."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest

from dashboards.outputs import finish_study
from dashboards.report import build_page, build_report
from harness.results.compare import paired_differences, paired_summary
from harness.results.schema import RunInfo, point_rows


def _rows(study: str, cells: dict[tuple[str, str], np.ndarray], **coords) -> pl.DataFrame:
    run = RunInfo(study=study, dataset=coords.pop("dataset", "mnist-test"), seed=0, config_hash="c0ffee", **coords)
    return pl.concat([point_rows(run, method, metric, v, np.arange(v.size), k=coords.get("k") if method != "global"
                                 else None) for (method, metric), v in cells.items()])


def _data(page: str) -> dict:
    blob = re.search(r"<script id='report-data' type='application/json'>(.*?)</script>", page, re.S).group(1)
    return json.loads(blob.replace("<\\/", "</"))["studies"]


def test_summary_without_points_is_drawn_and_tabulated_in_percent(tmp_path):
    study = tmp_path / "model_scaling"
    summary = pl.DataFrame({"model_size": [280, 600, 280, 600], "method": ["global", "global", "ttt", "ttt"],
                            "metric": ["error"] * 4, "mean": [0.1, 0.05, 0.04, 0.03], "ci_low": [0.08, 0.04, 0.03, 0.02],
                            "ci_high": [0.12, 0.06, 0.05, 0.04], "n": [100] * 4})
    study.mkdir()
    summary.write_parquet(study / "summary.parquet")
    page = build_report(tmp_path).read_text()
    assert "S1 — MNIST model scaling" in page and 'data-kind="line"' in page and "<img" not in page
    assert "<td>5.00 [4.00, 6.00]</td>" in page  # global at 600, in percent as the chart
    assert "unknown (no run.json)" in page and 'data-kind="difference"' not in page  # no points: no pairing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "model_scaling" / "nothing")


def test_paper_table_is_overlaid_and_tabulated_beside_ours(tmp_path):
    rng = np.random.default_rng(0)
    cells = {("global", "accuracy"): rng.random(200) < 0.97, ("ttt", "accuracy"): rng.random(200) < 0.99,
             ("ttt", "accuracy_neighbourhood"): np.ones(200), ("ttt", "accuracy_test_set"): rng.random(200) < 0.4}
    out = tmp_path / "local_vs_global"
    outputs = finish_study(_rows("local_vs_global", {k: v.astype(float) for k, v in cells.items()}), out,
                           by=["method", "metric"], paper={"study": "local_vs_global", "dataset": "mnist"})
    (out / "table2.md").write_text("| accuracy (%) | Global |\n|---|---|\n| ours | 97.00 |\n")
    page = build_page([tmp_path])
    assert 'data-kind="bar"' in page and "paper: Table 2, MNIST" in page
    ours = outputs.table.filter((pl.col("method") == "global") & (pl.col("metric") == "accuracy")).row(0, named=True)
    mine = f"{100 * ours['mean']:.2f} [{100 * ours['ci_low']:.2f}, {100 * ours['ci_high']:.2f}]"
    assert re.search(r"<td class=l>Table 2, MNIST \(LeNet-280\)</td><td class=l>Global</td><td class=l>accuracy \(%\)</td>"
                     r"<td class=l>dataset=mnist model_size=280</td><td>98\.57 ± 0\.12</td><td>" + re.escape(mine), page)
    assert "<h3>table2.md" in page and "<td class=l>ours</td><td>97.00</td>" in page
    diff = _data(page)["local_vs_global"]["runs"][0]["difference"]
    paired = (cells[("ttt", "accuracy")].astype(float) - cells[("global", "accuracy")].astype(float)).mean()
    assert [d["mean"] for d in diff if d["metric"] == "accuracy"] == [pytest.approx(paired, abs=1e-12)]


def test_running_sweep_search_and_unknown_study_each_get_a_section(tmp_path):
    # a sweep whose study has not written its tables yet: summarised from its finished trials' rows
    rows = tmp_path / "s5" / "sweeps" / "neighbourhood_size" / "rows"
    rows.mkdir(parents=True)
    for k in (3, 30):
        _rows("neighbourhood_size", {("ttt", "error"): np.full(10, k / 100), ("global", "error"): np.full(10, 0.5)},
              k=k).write_parquet(rows / f"h{k}.parquet")
    # a search: best.parquet and its trials' rows and configs
    search = tmp_path / "tune" / "sweeps" / "tune_ttt-280" / "rows"
    search.mkdir(parents=True)
    for i, lr in enumerate((1e-3, 1e-2)):
        _rows("tune_ttt", {("ttt", "error"): np.full(5, 0.1 * (i + 1)), ("global", "error"): np.full(5, 0.3)},
              dataset="mnist-val").write_parquet(search / f"t{i}.parquet")
        (search / f"t{i}.meta.json").write_text(json.dumps({"config": {"ttt_lr": lr, "ttt_steps": 50, "ttt_k": 20}}))
    pl.DataFrame({"model_size": [280], "ttt_lr": [1e-3], "val_ttt_error": [0.1]}).write_parquet(
        tmp_path / "tune" / "best.parquet")
    # a study no view knows: its axis is the coordinate it varies in
    finish_study(pl.concat([_rows("my_study", {("ttt", "error"): np.full(4, 0.1 * k)}, k=k) for k in (1, 2)]),
                 tmp_path / "mine", by=["k", "method", "metric"])

    page = build_page([tmp_path])
    data = _data(page)
    assert list(data) == ["neighbourhood_size", "tune_ttt", "my_study"]  # the paper's order, then the others
    (running,) = data["neighbourhood_size"]["runs"]
    assert running["running"] and "running: 2 trial(s) finished so far" in page
    assert {(r["k"], r["method"]): r["mean"] for r in running["summary"]}[(30, "ttt")] == pytest.approx(0.3)
    assert 'data-kind="search"' in page and "Best trial per search" in page and "best of tune_ttt-280" in page
    assert data["my_study"]["view"]["x"] == "k" and 'data-study="my_study"' in page


def test_ttt_is_paired_with_the_global_row_of_the_same_point():
    ttt = _rows("s", {("ttt", "error"): np.array([0.0, 1.0, 0.0])}, model_size=280, k=50)
    glob = _rows("s", {("global", "error"): np.array([1.0, 1.0, 0.0])}, model_size=280)
    other = _rows("s", {("global", "error"): np.array([0.0, 0.0, 0.0])}, model_size=600)
    diff = paired_differences(pl.concat([ttt, glob, other]))
    assert diff.sort("point_id")["value"].to_list() == [-1.0, 0.0, 0.0]  # TTT's k is its own, not a pairing key
    assert diff["k"].unique().to_list() == [50] and diff["model_size"].unique().to_list() == [280]
    summary = paired_summary(pl.concat([ttt, glob]), resamples=200)
    assert summary.height == 1 and summary["mean"][0] == pytest.approx(-1 / 3) and summary["n"][0] == 3
    assert paired_differences(pl.concat([ttt, glob, glob])).equals(diff.filter(pl.col("model_size") == 280))
    again = glob.with_columns(value=1.0 - pl.col("value"))  # another run's global rows, other values
    with pytest.raises(ValueError, match="scores 3 point\\(s\\) more than once, with other values"):
        paired_differences(pl.concat([ttt, glob, again]))
    assert paired_differences(ttt).is_empty()


def test_static_figure_goes_logarithmic_only_when_one_line_would_flatten_the_rest():
    from dashboards.figures import wants_log_y

    assert wants_log_y(np.array([0.8865, 0.0359, 0.0101]))  # a dead LeNet-280 beside live nets (S1 --paper)
    assert not wants_log_y(np.array([0.1335, 0.0286, 0.0148, 0.0127]))  # the main job's spread stays linear
    assert not wants_log_y(np.array([0.5, 0.0, 0.01]))  # a zero has no logarithm
    assert not wants_log_y(np.array([]))
