"""Studies on the one pipeline, as a user runs them: resume refuses changed options and otherwise returns the
same table without recomputing, duplicate sweep values are refused before work, an edited input file makes
its trials stale, and the console entry point lists and runs the studies."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from harness.errors import ConfigError

S1_SMALL = ["--sizes", "280", "--epochs", "1", "--fraction", "0.1", "--test-points", "50"]


def _rows_files(out) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.rglob("rows/*.parquet")}


def test_s1_resume_refuses_changed_options_and_otherwise_recomputes_nothing(tmp_path, mnist):
    import studies.model_scaling as study

    out = str(tmp_path / "s1")
    first = study.main([*S1_SMALL, "--out-dir", out])
    files = _rows_files(tmp_path / "s1")
    assert len(files) == 1
    with pytest.raises(ConfigError) as info:  # the earlier sweep's table must not come back as this one's
        study.main(["--sizes", "280", "--test-points", "300", "--resume", "--out-dir", out])
    message = str(info.value)
    assert "--resume" in message and "--test-points: stored 50, now 300" in message
    assert "--epochs: stored 1, now 10" in message and "--fraction: stored 0.1, now 1.0" in message
    again = study.main([*S1_SMALL, "--resume", "--out-dir", out])
    assert again.equals(first) and _rows_files(tmp_path / "s1") == files  # same table, nothing recomputed
    points = pl.read_parquet(tmp_path / "s1" / "points.parquet")
    assert points.filter(pl.col("metric") == "error").group_by("method").len()["len"].to_list() == [50] * 3


@pytest.mark.parametrize(("script", "args", "option"), [
    ("model_scaling", ["--sizes", "280", "600", "280"], "--sizes repeats [280]"),
    ("model_scaling", ["--seeds", "0", "0"], "--seeds repeats [0]"),
    ("neighbourhood_size", ["--ks", "3", "10", "3"], "--ks repeats [3]"),
    ("theory_check", ["--d2", "8", "8"], "--d2 repeats [8]"),
])
def test_duplicate_sweep_values_are_refused_before_work(script, args, option, tmp_path):
    import importlib

    study = importlib.import_module(f"studies.{script}")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=option.replace("[", r"\[").replace("]", r"\]")):
        study.main([*args, "--out-dir", str(out)])
    assert not out.exists()


def _embeddings(folder, flip: bool = False) -> list[str]:
    """Two Gaussian classes in 8 dimensions as .npy + <stem>.labels.npy (labels flipped with `flip`)."""
    rng = np.random.default_rng(0)
    paths = []
    for name, n in (("train", 600), ("test", 80)):
        y = np.arange(n) % 2
        np.save(folder / f"{name}.npy", (rng.normal(size=(n, 8)) + 2.0 * y[:, None]).astype(np.float32))
        np.save(folder / f"{name}.labels.npy", (1 - y) if flip and name == "train" else y)
        paths.append(str(folder / f"{name}.npy"))
    return paths


def test_embedding_study_resumes_and_recomputes_after_an_input_file_is_edited(tmp_path, capsys):
    import studies.neighbourhood_size as study

    train, test = _embeddings(tmp_path)
    args = ["--ks", "5", "20", "--epochs", "3", "--test-points", "80", "--holdout", "40", "--embeddings", train, test,
            "--out-dir", str(tmp_path / "s5")]
    first = study.main(args)
    ttt = first.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error"))
    assert ttt["mean"].max() < 0.2  # separable classes: TTT on the right labels is mostly right
    files = _rows_files(tmp_path / "s5")
    assert study.main([*args, "--resume"]).equals(first) and _rows_files(tmp_path / "s5") == files
    capsys.readouterr()

    _embeddings(tmp_path, flip=True)  # the training labels edited in place: every cached number is now wrong
    edited = study.main(args)
    out = capsys.readouterr().out
    assert "2 trial(s) have stale cached rows, recomputed" in out and "train.labels.npy" in out
    ttt = edited.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error"))
    assert ttt["mean"].min() > 0.8  # trained on flipped labels, as the edited file says


def test_s3_runs_on_the_pipeline_and_resumes(tmp_path, capsys):
    import studies.lm_scaling as study

    out = tmp_path / "s3"
    args = ["--smoke-test", "--num-neighbours", "2", "--out-dir", str(out)]
    first = study.main(args)
    printed = capsys.readouterr().out
    assert "LoRA rank 4 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj trains" in printed
    assert "no Pile-weighted total: 24 of 24 rows have no Pile subset" in printed
    assert "figure: bits per byte, mean over test sequences" in printed  # what the figure shows
    points = pl.read_parquet(out / "points.parquet")
    assert set(points["study"]) == {"lm_scaling"} and set(points["metric"]) == {"bits_per_byte", "utf8_bytes"}
    points = points.filter(pl.col("metric") == "bits_per_byte")
    assert points.group_by("method").len().sort("method")["len"].to_list() == [12, 12]  # every sequence once
    assert np.isfinite(points["value"].to_numpy()).all()
    assert set(first["method"]) == {"global", "ttt"} and (out / "summary.parquet").exists()
    assert (out / "figure.png").stat().st_size > 10_000
    files = _rows_files(out)
    assert len(files) == 1
    assert study.main([*args, "--resume"]).equals(first) and _rows_files(out) == files
    with pytest.raises(ConfigError, match="--num-neighbours: stored 2, now 3"):
        study.main(["--smoke-test", "--num-neighbours", "3", "--out-dir", str(out), "--resume"])


def test_console_entry_point_lists_and_runs_studies(tmp_path, capsys):
    from harness.cli import main

    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in ("model_scaling", "mlp_scaling", "data_scaling", "neighbourhood_size", "moe_scaling",
                 "local_vs_global", "cross_entropy", "theory_check", "tune_ttt", "lm_scaling"):
        assert f"  {name} " in listed
    assert main(["model_scalin", "--help"]) == 2
    assert "did you mean 'model_scaling'" in capsys.readouterr().err
    assert main(["model_scaling", "--sizes", "123", "--out-dir", str(tmp_path)]) == 2
    assert "model_size 123 is not a LeNet size" in capsys.readouterr().err


def test_resume_refuses_finished_trials_made_by_other_code(tmp_path, capsys):
    import json

    import studies.theory_check as study

    args = ["--d1", "64", "--d2", "8", "--s", "1", "--n-test", "50", "--out-dir", str(tmp_path)]
    first = study.main(args)
    (meta,) = tmp_path.rglob("rows/*.meta.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "code_version": "0123456789ab"}))  # other code
    capsys.readouterr()
    with pytest.raises(ConfigError, match="--resume: 1 finished trial"):  # Tune would hand the old rows back
        study.main([*args, "--resume"])
    assert "made by other code (0123456789ab" in capsys.readouterr().out
    assert study.main([*args, "--resume", "--reuse-stale"]).equals(first)  # kept, as asked
    assert study.main(args).equals(first)  # without --resume: recomputed (deterministic: the same table)
    assert json.loads(meta.read_text())["code_version"] != "0123456789ab"
