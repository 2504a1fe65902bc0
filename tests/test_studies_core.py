"""S1 and S11 end to end at small size: files written, numbers as the paper/theory predicts."""

import importlib
import json

import numpy as np
import polars as pl
import pytest
import ray

from harness.data.synthetic import LRHConfig
from harness.errors import ConfigError
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
    assert set(rows["study"].unique()) == {"model_scaling"}
    assert rows.filter(pl.col("metric") == "error").height == 900
    ttt_hparams = rows.filter(pl.col("method") == "ttt")["hparams"].unique().to_list()
    assert [json.loads(h)["engine"] for h in ttt_hparams] == ["exact"]  # engine auto ran exact on the CPU
    assert _mean(rows, "global") > 0.05  # one epoch: an imperfect global model ...
    assert _mean(rows, "ttt") < _mean(rows, "global") - 0.03  # ... that TTT improves on
    again = mnist_trial(cfg, mnist)  # same seed, same table
    assert again.drop("wall_time_s", "phase_seconds").equals(rows.drop("wall_time_s", "phase_seconds"))


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


def test_theory_check_study_measures_the_section_c3_prediction(tmp_path):
    import studies.theory_check as study

    table = study.main(["--d1", "256", "--d2", "32", "128", "--s", "1", "--k", "10", "--noise", "0",
                        "--points-per-cluster", "30", "--n-test", "1000", "--out-dir", str(tmp_path)])
    glob = table.filter((pl.col("method") == "global") & (pl.col("metric") == "squared_error")).sort("model_size")
    assert glob["model_size"].to_list() == [32, 128]
    # the measured global error (not the printed formula) lands on 1 - d2/d1 = 0.875 and 0.5 (one random
    # projection: within 0.1 of the expectation over projections; seeds 0-3 stay within 0.09) ...
    np.testing.assert_allclose(glob["mean"].to_numpy(), [1 - 32 / 256, 1 - 128 / 256], atol=0.1)
    ttt = table.filter((pl.col("method") == "ttt") & (pl.col("metric") == "squared_error"))
    assert ttt["mean"].max() < 1e-8  # ... and noiseless TTT is exact
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_bad_study_config_fails_before_work(tmp_path, capsys):
    import studies.model_scaling as study

    with pytest.raises(ConfigError, match="model_size 123 is not a LeNet size"):
        study.main(["--sizes", "123", "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="fraction must be in"):
        MnistTrialConfig(model_size=280, fraction=0.0)
    with pytest.raises(SystemExit) as exit_info:  # the generated CLI lists the engines and refuses others
        study.main(["--engine", "fast", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--engine" in err and "fused-fp16-state" in err and "'fast'" in err
    assert not any(tmp_path.iterdir())
    assert {t.engine for t in study.parse(["--engine", "fused-fp16"]).trials()} == {"fused-fp16"}


def test_head_engine_choices_are_the_registered_engines():
    import typing

    from harness.trials.options import ComputeOptions, HeadEngine
    from harness.ttt.head_engines import HEAD_TTT_ENGINES, head_engine_choices

    assert sorted(typing.get_args(HeadEngine)) == sorted(head_engine_choices()) == sorted(["auto",
                                                                                          *HEAD_TTT_ENGINES.names()])
    assert ComputeOptions().engine == "auto"  # the default of every study's --engine


def _embedding_files(folder):
    """A tiny embeddings pair (.npy + <stem>.labels.npy) of 2 separable classes."""
    rng = np.random.default_rng(0)
    paths = []
    for name, n in (("train", 400), ("test", 60)):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 8)).astype(np.float32) + 3 * y[:, None]
        np.save(folder / f"{name}.npy", x)
        np.save(folder / f"{name}.labels.npy", y)
        paths.append(str(folder / f"{name}.npy"))
    return paths


ENGINE_STUDIES = [  # (study script, extra arguments, the trial configs its parsed config runs through head TTT)
    ("data_scaling", [], lambda cfg: cfg.trials()),
    ("data_scaling", ["--embeddings", "EMB"], lambda cfg: cfg.trials()),
    ("neighbourhood_size", [], lambda cfg: cfg.trials()),
    ("mlp_scaling", [], lambda cfg: cfg.trials()),
    ("cross_entropy", [], lambda cfg: cfg.trials()),
    ("moe_scaling", [], lambda cfg: [cfg.reference()]),  # the MoE experts are not head TTT
    ("tune_ttt", ["--sizes", "280", "1268"], lambda cfg: [MnistTrialConfig(**cfg.fixed(s)) for s in cfg.sizes]),
    ("local_vs_global", [], lambda cfg: cfg.trials()),
]


@pytest.mark.parametrize(("name", "extra", "trials_of"), ENGINE_STUDIES,
                         ids=["data_scaling", "data_scaling-embeddings", "neighbourhood_size", "mlp_scaling",
                              "cross_entropy", "moe_scaling", "tune_ttt", "local_vs_global"])
def test_engine_option_reaches_every_trial_and_a_bad_one_fails_before_work(name, extra, trials_of, tmp_path, capsys):
    study = importlib.import_module(f"studies.{name}")
    if "EMB" in extra:
        extra = ["--embeddings", *_embedding_files(tmp_path)]
    out = tmp_path / "out"
    assert {t.engine for t in trials_of(study.parse(extra))} == {"auto"}
    trials = trials_of(study.parse([*extra, "--engine", "fused-fp16"]))
    assert len(trials) >= 1 and {t.engine for t in trials} == {"fused-fp16"}
    ray_was_up = ray.is_initialized()  # other tests may have left a local Ray running
    with pytest.raises(SystemExit):
        study.main([*extra, "--engine", "fast", "--out-dir", str(out)])
    assert "--engine" in capsys.readouterr().err
    assert ray.is_initialized() == ray_was_up and not out.exists()


def test_embedding_head_config_rejects_an_unknown_engine():
    assert EmbeddingHeadConfig(engine="fused-fp16-state").engine == "fused-fp16-state"
    with pytest.raises(ConfigError, match="engine must be one of .*'exact'.*got 'fused-fp8'"):
        EmbeddingHeadConfig(engine="fused-fp8")
