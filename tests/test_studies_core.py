"""S1 and S11 end to end at small size: files written, numbers as the paper/theory predicts."""

import importlib

import numpy as np
import polars as pl
import pytest
import ray

from harness.data.synthetic import LRHConfig
from harness.distributed.trials import mnist_config_from_dict
from harness.trials.embedding_head import EmbeddingHeadConfig
from harness.trials.lrh import TheoryTrialConfig, lrh_trial
from harness.trials.mnist import MnistTrialConfig, mnist_trial


def _mean(rows, method, metric="error"):
    return rows.filter((pl.col("method") == method) & (pl.col("metric") == metric))["value"].mean()


def test_global_error_matches_section_c3_and_ttt_is_exact():
    errs = []
    for seed in range(3):
        rows = lrh_trial(TheoryTrialConfig(LRHConfig(d1=256, d2=32, s=1, n_train=256 * 30, n_test=300, seed=seed), k=10))
        assert _mean(rows, "ttt", "squared_error") < 1e-10  # noiseless: the local fit is exact
        errs.append(_mean(rows, "global", "squared_error"))
    assert np.mean(errs) == pytest.approx(1 - 32 / 256, abs=0.06)


def test_ttt_error_scales_as_noise_over_k():
    for k in (10, 40):
        rows = lrh_trial(TheoryTrialConfig(LRHConfig(d1=512, d2=16, s=1, n_train=512 * 50, n_test=2000, noise=0.2, seed=1), k=k))
        # s = 1, identical features per neighbourhood: the local fit's error is the mean noise squared,
        # σ²/k in expectation; ~512 independent neighbourhoods put the average within ~6 % (1 sd) of it
        assert _mean(rows, "ttt", "squared_error") == pytest.approx(0.04 / k, rel=0.25)


def test_mnist_trial_ttt_beats_global_at_the_smallest_size(mnist):
    cfg = MnistTrialConfig(model_size=280, seed=1, epochs=2, fraction=0.2, test_points=300, ttt_steps=20)
    rows = mnist_trial(cfg, mnist)
    assert set(rows["method"].unique()) == {"global", "ttt", "majority"}
    assert rows.filter(pl.col("metric") == "error").height == 900
    assert _mean(rows, "global") > 0.05  # one epoch: an imperfect global model ...
    assert _mean(rows, "ttt") < _mean(rows, "global") - 0.03  # ... that TTT improves on
    again = mnist_trial(cfg, mnist)  # same seed, same table
    assert again.drop("wall_time_s").equals(rows.drop("wall_time_s"))


def test_model_scaling_study_writes_table_parquet_and_png(tmp_path, mnist, capsys):
    import studies.model_scaling as study

    out = tmp_path / "ms"
    table = study.main(["--sizes", "280", "600", "--epochs", "1", "--fraction", "0.2", "--test-points", "150",
                        "--out-dir", str(out)])
    assert (out / "points.parquet").exists() and (out / "summary.parquet").exists()
    assert (out / "figure.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "model_size" in printed and "ttt" in printed
    err = table.filter(pl.col("metric") == "error")
    assert sorted(err["model_size"].unique().to_list()) == [280, 600]
    assert err.filter(pl.col("method") == "ttt")["n"].to_list() == [150, 150]


def test_theory_check_study(tmp_path, capsys):
    import studies.theory_check as study

    study.main(["--d1", "64", "--d2", "8", "16", "--s", "1", "--n-test", "100", "--out-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "1-d2/d1" in printed and "0.8750" in printed and "0.7500" in printed
    assert (tmp_path / "figure.png").exists()


def test_bad_study_config_fails_before_work(tmp_path):
    import studies.model_scaling as study

    with pytest.raises(ValueError, match="model_size 123 is not a LeNet size"):
        study.main(["--sizes", "123", "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="fraction must be in"):
        MnistTrialConfig(model_size=280, fraction=0.0)
    with pytest.raises(ValueError, match="engine must be one of .*'fused-fp16'.*got 'fast'"):
        study.main(["--engine", "fast", "--out-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())
    assert {t["engine"] for t in study.parse_args(["--engine", "fused-fp16"]).trials()} == {"fused-fp16"}


ENGINE_STUDIES = [  # (study script, extra arguments, the trial configs its parsed config runs through head TTT)
    ("data_scaling", [], lambda cfg: cfg.trials()),
    ("data_scaling", ["--embeddings", "mnist-pixels"], lambda cfg: cfg.trials()),
    ("neighbourhood_size", [], lambda cfg: cfg.trials()),
    ("mlp_scaling", [], lambda cfg: cfg.trials()),
    ("cross_entropy", [], lambda cfg: cfg.trials()),
    ("moe_scaling", [], lambda cfg: [cfg.reference()]),  # the MoE experts are not head TTT
    ("tune_ttt", ["--sizes", "280", "1268"], lambda cfg: [mnist_config_from_dict(cfg.fixed(s))[0] for s in cfg.sizes]),
    ("local_vs_global", [], lambda cfg: cfg.trials()),
]


@pytest.mark.parametrize(("name", "extra", "trials_of"), ENGINE_STUDIES,
                         ids=["data_scaling", "data_scaling-embeddings", "neighbourhood_size", "mlp_scaling",
                              "cross_entropy", "moe_scaling", "tune_ttt", "local_vs_global"])
def test_engine_option_reaches_every_trial_and_a_bad_one_fails_before_work(name, extra, trials_of, tmp_path):
    study = importlib.import_module(f"studies.{name}")
    assert {t.engine for t in trials_of(study.parse_args(extra))} == {"exact"}
    trials = trials_of(study.parse_args([*extra, "--engine", "fused-fp16"]))
    assert len(trials) >= 1 and {t.engine for t in trials} == {"fused-fp16"}
    ray_was_up = ray.is_initialized()  # other tests may have left a local Ray running
    with pytest.raises(ValueError, match="engine must be one of .*'fused-fp16'.*got 'fast'"):
        study.main([*extra, "--engine", "fast", "--out-dir", str(tmp_path)])
    assert ray.is_initialized() == ray_was_up and not any(tmp_path.iterdir())


def test_embedding_head_config_rejects_an_unknown_engine():
    assert EmbeddingHeadConfig(engine="fused-fp16-state").engine == "fused-fp16-state"
    with pytest.raises(ValueError, match="engine must be one of .*'exact'.*got 'fused-fp8'"):
        EmbeddingHeadConfig(engine="fused-fp8")
