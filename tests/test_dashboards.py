import polars as pl
import pytest

from dashboards.figures import plot_metric_vs
from dashboards.report import build_report


def test_report_inlines_figures_and_tables(tmp_path):
    study = tmp_path / "model_scaling"
    summary = pl.DataFrame({"model_size": [280, 600, 280, 600], "method": ["global", "global", "ttt", "ttt"],
                            "metric": ["error"] * 4, "mean": [0.1, 0.05, 0.04, 0.03], "ci_low": [0.08, 0.04, 0.03, 0.02],
                            "ci_high": [0.12, 0.06, 0.05, 0.04], "n": [100] * 4})
    study.mkdir()
    summary.write_parquet(study / "summary.parquet")
    plot_metric_vs(summary, "model_size", study / "figure.png", ylabel="Test error", percent=True)
    page = build_report(tmp_path).read_text()
    assert page.count("data:image/png;base64,") == 1
    assert "<h2>model_scaling</h2>" in page and "<td>0.05</td>" in page
    with pytest.raises(FileNotFoundError, match="no study outputs"):
        build_report(tmp_path / "model_scaling" / "nothing")
