"""The HTML report as a researcher opens it: built from small real runs of S1, S6, S11 and S3, loaded offline in
headless Chromium (every section's charts rendered, hover / legend / log-axis buttons working, no JavaScript
error), its numbers equal to the summaries and to a paired TTT − global bootstrap computed here, several runs of
one study overlaid, the run metadata recorded, and the live server refreshing the page while results arrive.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them): without them the browser tests fail,
naming the packages."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("model_scaling", "moe_scaling", "theory_check", "lm_scaling")  # S1, S6, S11, S3
SMALL = {  # the --smoke-test presets, shrunk further where a test needs no more
    "model_scaling": ["--smoke-test", "--test-points", "100"],
    "moe_scaling": ["--smoke-test", "--experts", "1", "10"],
    "theory_check": ["--smoke-test"],
    "lm_scaling": ["--smoke-test", "--num-neighbours", "2"],
}


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """results/<study>/ of one small real run of each of S1, S6, S11 and S3 (one local Ray for all four)."""
    import importlib

    import ray

    from harness.distributed.runtime import init_ray

    results = tmp_path_factory.mktemp("report") / "results"
    if ray.is_initialized():
        ray.shutdown()
    init_ray("local", num_cpus=2)
    try:
        for name in STUDIES:
            importlib.import_module(f"studies.{name}").main([*SMALL[name], "--out-dir", str(results / name)])
    finally:
        ray.shutdown()
    return results


def _report_data(page: str) -> dict:
    blob = re.search(r"<script id='report-data' type='application/json'>(.*?)</script>", page, re.S)
    assert blob, "the page embeds its numbers as JSON"
    return json.loads(blob.group(1).replace("<\\/", "</"))


def _bootstrap(values: np.ndarray, resamples: int = 1000, level: float = 0.90) -> tuple[float, float, float]:
    """Percentile bootstrap of the mean of one seed's points (the report's scheme, written out here)."""
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(values.mean()), float(low), float(high)


# --- the browser ------------------------------------------------------------------------------------------------

def _chromium():
    """A headless Chromium driven by chromedriver, with every non-loopback request sent to a dead proxy (the page
    must work offline); fails naming the packages when the browser is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the report's browser test needs headless Chromium: apt-get install -y chromium chromium-driver "
                    "(.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1900", "--hide-scrollbars", "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


RENDERED = """return Array.from(document.querySelectorAll('div.chart')).map(c => {
  const gd = c.querySelector('.js-plotly-plot');
  return {study: c.dataset.study, kind: c.dataset.kind, svg: !!c.querySelector('svg.main-svg'),
          traces: gd && gd.data ? gd.data.length : 0, points: gd ? gd.querySelectorAll('.scatterlayer .point, .barlayer .point').length : 0};
});"""


def _wait_rendered(driver, timeout: float = 60.0) -> list[dict]:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const c = document.querySelectorAll('div.chart');"
        "return c.length > 0 && Array.from(c).every(x => x.querySelector('svg.main-svg'));"))
    return driver.execute_script(RENDERED)


def test_report_of_small_runs_opens_offline_in_chromium_with_every_chart_rendered(small_runs, tmp_path):
    from selenium.webdriver.common.by import By

    from dashboards.report import build_report

    page_path = build_report(small_runs, tmp_path / "report.html")
    page = page_path.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing to fetch: plotly.js is inlined
    driver = _chromium()
    try:
        driver.get(page_path.as_uri())
        charts = _wait_rendered(driver)
        assert len(charts) == int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-charts"))
        sections = driver.execute_script("return Array.from(document.querySelectorAll('section.study'))"
                                         ".map(s => s.dataset.study);")
        assert sections == list(("model_scaling", "lm_scaling", "moe_scaling", "theory_check"))  # the paper's order
        for study in STUDIES:
            mine = [c for c in charts if c["study"] == study]
            assert {"line", "difference"} <= {c["kind"] for c in mine}, study
            assert all(c["svg"] and c["traces"] > 0 and c["points"] > 0 for c in mine), (study, mine)

        # hover: the TTT line's first point shows its mean and CI
        hover = driver.execute_script("""
            const gd = document.querySelector('#study-model_scaling .js-plotly-plot');
            const i = gd.data.findIndex(t => t.name === 'TTT');
            Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: 0}]);
            const h = gd.querySelector('.hoverlayer .hovertext');
            return h ? h.textContent : null;""")
        summary = pl.read_parquet(small_runs / "model_scaling" / "summary.parquet")
        ttt = summary.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error")).sort("model_size").row(
            0, named=True)
        assert hover is not None and f"{100 * ttt['mean']:.2f}% [{100 * ttt['ci_low']:.2f}, " in hover

        # the legend hides a method; the axis buttons switch log / linear
        gd = driver.find_element(By.CSS_SELECTOR, "#study-model_scaling .js-plotly-plot")
        toggle = next(t for t in gd.find_elements(By.CSS_SELECTOR, ".legend .traces")
                      if t.find_element(By.CSS_SELECTOR, ".legendtext").text == "TTT")
        toggle.find_element(By.CSS_SELECTOR, ".legendtoggle").click()
        time.sleep(0.5)
        state = driver.execute_script("""const gd = document.querySelector('#study-model_scaling .js-plotly-plot');
            return {visible: gd.data.filter(t => t.legendgroup === gd.data.find(u => u.name === 'TTT').legendgroup)
                    .map(t => t.visible), xtype: gd.layout.xaxis.type};""")
        assert state["visible"] == ["legendonly", "legendonly"] and state["xtype"] == "log"  # line and CI band
        button = next(b for b in gd.find_elements(By.CSS_SELECTOR, ".updatemenu-button") if b.text == "x: linear")
        button.click()
        time.sleep(0.5)
        assert driver.execute_script("return document.querySelector('#study-model_scaling .js-plotly-plot')"
                                     ".layout.xaxis.type;") == "linear"

        errors = driver.execute_script("return window.__reportErrors;")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [] and severe == [], (errors, severe)
        driver.execute_script("window.scrollTo(0, 0); location.reload();")
        _wait_rendered(driver)
        shot = Path(__import__("os").environ.get("TTT_REPORT_SCREENSHOT", tmp_path / "report.png"))
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    finally:
        driver.quit()


def test_live_report_reloads_itself_when_a_study_finishes(small_runs, tmp_path):
    from dashboards.report import make_server

    root = tmp_path / "live"
    shutil.copytree(small_runs / "theory_check", root / "theory_check")
    server = make_server([root], port=0, interval=0.3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    driver = _chromium()
    try:
        before = urllib.request.urlopen(url + "stamp").read().decode()
        driver.get(url)
        _wait_rendered(driver)
        assert driver.execute_script("return !!document.getElementById('study-theory_check') && "
                                     "!document.getElementById('study-model_scaling');")
        shutil.copytree(small_runs / "model_scaling", root / "model_scaling")  # a study writes its tables
        assert urllib.request.urlopen(url + "stamp").read().decode() != before
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return !!document.getElementById('study-model_scaling');"))  # reloaded by itself, no click
        charts = _wait_rendered(driver)
        assert {c["study"] for c in charts} == {"theory_check", "model_scaling"}
        assert driver.execute_script("return window.__reportErrors;") == []
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


# --- the numbers ---------------------------------------------------------------------------------------------

def test_report_numbers_equal_the_summaries_and_an_independent_paired_bootstrap(small_runs):
    from dashboards.report import build_page

    page = build_page([small_runs])
    data = _report_data(page)["studies"]
    assert set(data) == set(STUDIES)
    for study in STUDIES:
        (run,) = data[study]["runs"]
        summary = pl.read_parquet(small_runs / study / "summary.parquet")
        assert pl.DataFrame(run["summary"]).select(summary.columns).sort(summary.columns).equals(
            summary.sort(summary.columns))

    # S1: TTT − global error at each size, paired by test point, against this test's own pairing and bootstrap
    points = pl.read_parquet(small_runs / "model_scaling" / "points.parquet").filter(pl.col("metric") == "error")
    diff = {(r["model_size"], r["metric"]): r for r in data["model_scaling"]["runs"][0]["difference"]}
    summary = pl.read_parquet(small_runs / "model_scaling" / "summary.parquet")
    for size in (280, 600):
        by_point = {m: dict(zip(p["point_id"].to_list(), p["value"].to_list(), strict=True))
                    for m in ("ttt", "global")
                    for p in [points.filter((pl.col("model_size") == size) & (pl.col("method") == m))]}
        ids = sorted(by_point["ttt"])
        assert ids == sorted(by_point["global"]) and len(ids) == 100
        d = np.array([by_point["ttt"][i] - by_point["global"][i] for i in ids])
        mean, low, high = _bootstrap(d)
        got = diff[(size, "error")]
        assert got["n"] == 100
        np.testing.assert_allclose([got["mean"], got["ci_low"], got["ci_high"]], [mean, low, high], rtol=0, atol=1e-12)
        means = {m: summary.filter((pl.col("model_size") == size) & (pl.col("method") == m)
                                   & (pl.col("metric") == "error"))["mean"][0] for m in ("ttt", "global")}
        assert got["mean"] == pytest.approx(means["ttt"] - means["global"], abs=1e-12)
        assert f"{100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]" in page  # the table, in percentage points
        row = summary.filter((pl.col("model_size") == size) & (pl.col("method") == "ttt")
                             & (pl.col("metric") == "error")).row(0, named=True)
        assert f"{100 * row['mean']:.2f} [{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}]" in page

    # S6: MoE rows per E; TTT and global as flat lines across the experts axis
    moe = pl.DataFrame(data["moe_scaling"]["runs"][0]["summary"])
    assert sorted(moe.filter(pl.col("method") == "moe")["experts"].to_list()) == [1, 1, 10, 10]  # error and CE
    assert moe.filter(pl.col("method") != "moe")["experts"].null_count() == moe.filter(pl.col("method") != "moe").height


def test_run_record_says_how_each_run_was_made(small_runs):
    from dashboards.report import build_page
    from harness.results.run_record import read_run, study_config_hash

    s1 = read_run(small_runs / "model_scaling")
    assert s1["preset"] == "smoke_test" and s1["options_given"][:2] == ["--test-points", "100"]
    assert s1["config_hash"] == study_config_hash(s1["options"], "ray") and s1["options"]["epochs"] == 1
    assert s1["sweeps"]["model_scaling"]["trials"] == 2 and s1["sweeps"]["model_scaling"]["reused"] == 0
    assert s1["sweeps"]["model_scaling"]["cluster"]["nodes"] == 1 and s1["devices"] == ["cpu"]
    assert s1["stand_in"] is None and s1["datasets"] == ["mnist-test"] and s1["rows"] == 100 * 2 * 5 + 2  # + dead rows
    points = pl.read_parquet(small_runs / "model_scaling" / "points.parquet")
    assert s1["git_shas"] == points["git_sha"].unique().to_list()
    assert sorted(s1["sweeps"]["model_scaling"]["config_hashes"]) == sorted(points["config_hash"].unique())
    assert sorted(read_run(small_runs / "moe_scaling")["sweeps"]) == ["moe_scaling", "moe_scaling_reference"]
    assert "tiny random Qwen2" in read_run(small_runs / "lm_scaling")["stand_in"]
    page = build_page([small_runs])
    assert "--smoke-test with --test-points 100" in page and "tiny random Qwen2" in page
    assert s1["config_hash"] in page and s1["git_sha"] in page


# --- several runs, the command line ----------------------------------------------------------------------------

def test_two_runs_of_one_study_overlay_in_one_chart_told_apart_by_config_hash(small_runs, tmp_path, monkeypatch):
    """A second S11 run (other d2, another folder) overlays the first in the same charts; its Tune logger
    callback (`--callbacks`) saw every trial; the same options in another folder, with other resources, hash
    alike."""
    import studies.theory_check as s11
    from dashboards.report import build_page
    from harness.results.run_record import read_run, study_config_hash

    log = tmp_path / "callback.jsonl"
    monkeypatch.setenv("TTT_TEST_CALLBACK_LOG", str(log))
    other = tmp_path / "other" / "results"
    s11.main(["--smoke-test", "--d2", "8", "16", "--callbacks", "distributed_fixtures:ResultLog",
              "--out-dir", str(other / "theory_check")])
    reported = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(reported) == 2 and all("ttt_squared_error" in r for r in reported)

    page = build_page([small_runs, other])
    (section,) = [v for k, v in _report_data(page)["studies"].items() if k == "theory_check"]
    hashes = [r["config_hash"] for r in section["runs"]]
    assert len(hashes) == 2 and len(set(hashes)) == 2
    first = re.search(r'<section class="study" id="study-theory_check".*?</section>', page, re.S).group(0)
    figures = [json.loads(m) for m in re.findall(r'Plotly\.newPlot\(\s*"chart-\d+",\s*(\[.*?\]),\s*\{', first, re.S)]
    names = {t.get("name", "") for fig in figures[:1] for t in fig}
    for run in section["runs"]:  # both runs' lines in the first chart, labelled with their hash
        assert any(run["config_hash"][:8] in n for n in names), (run["config_hash"], names)

    record = read_run(small_runs / "theory_check")  # the same options run into another folder hash alike
    moved = {**record["options"], "out_dir": str(tmp_path / "again"), "ray": {"cpus_per_trial": 2.0}}
    assert study_config_hash(moved, "ray") == record["config_hash"] and record["config_hash"] in hashes


def test_report_command_line(small_runs, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(small_runs / "theory_check"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and 'id="study-theory_check"' in out.read_text()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "do not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no study outputs" in capsys.readouterr().err


def test_unknown_tune_callbacks_are_refused_before_work():
    from harness.distributed.study import RayOptions

    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        RayOptions(callbacks=("wandbb",))
    with pytest.raises(ConfigError, match="module 'no_such_module' cannot be imported"):
        RayOptions(callbacks=("no_such_module:Callback",))
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(ConfigError, match="pip install mlflow"):
            RayOptions(callbacks=("mlflow",))
    with pytest.raises(ConfigError, match="is not a ray.tune.Callback"):
        RayOptions(callbacks=("json:JSONDecoder",)).tune_callbacks("x")


def test_tensorboard_reads_the_learning_curves_under_the_tune_storage(small_runs):
    """`tensorboard --logdir <out-dir>/sweeps` (the `tensorboard` extra) shows each trial's training curve: its
    event files hold the epochs' losses that Tune's progress.csv holds."""
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (Path(sys.executable).parent / "tensorboard").exists()  # the command the extra installs
    trials = sorted((small_runs / "model_scaling" / "sweeps" / "model_scaling").glob("_trainable_*"))
    assert len(trials) == 2
    for trial in trials:
        events = EventAccumulator(str(trial))
        events.Reload()
        curve = [(e.step, e.value) for e in events.Scalars("ray/tune/train_loss")]
        progress = pl.read_csv(trial / "progress.csv").filter(pl.col("train_loss").is_not_null())
        assert len(curve) == progress.height == 1  # the smoke test trains one epoch
        assert curve[0][1] == pytest.approx(progress["train_loss"][0], rel=1e-6) and 0 < curve[0][1] < 3
