"""Study options that would be silently ignored, or found bad only inside trials after the CNN trained, are refused
at parse time or before any work, naming the option: S4 (data_scaling) options that do not apply to the chosen
data / protocol, the embedding options without embeddings (S5 and every study with --embeddings), --ttt-lr, and
tune_ttt's engine and search space against its --fraction subsample. S4 prints what it trained."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

from harness.errors import ConfigError


class WorkStarted(BaseException):  # noqa: N818  a BaseException: no `except Exception` in the code swallows it
    """Raised by a spy: the study reached work it should have refused before."""


def _spy(*_: object, **__: object) -> None:
    raise WorkStarted


@pytest.fixture
def no_work(monkeypatch):
    """Ray and any training raise WorkStarted: a test that passes was refused before work."""
    monkeypatch.setattr("ray.init", _spy)
    monkeypatch.setattr("harness.trials.mnist.train_classifier", _spy)
    monkeypatch.setattr("harness.trials.embedding_head.train_classifier", _spy)


def _embeddings(folder) -> list[str]:
    """A tiny .npy pair (+ <stem>.labels.npy): 2 classes in 4 dimensions."""
    paths = []
    for name, n in (("train", 40), ("test", 10)):
        np.save(folder / f"{name}.npy", np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32))
        np.save(folder / f"{name}.labels.npy", np.arange(n) % 2)
        paths.append(str(folder / f"{name}.npy"))
    return paths


def _parse(name: str, args: list[str]):
    return importlib.import_module(f"studies.{name}").parse(args)


def _refused(capsys, name: str, args: list[str]) -> str:
    """The message parsing `args` for study `name` is refused with (a ConfigError, or tyro's exit 2 with the
    config's own message in a box on stderr), as one line."""
    with pytest.raises((ConfigError, SystemExit)) as info:
        _parse(name, args)
    if isinstance(info.value, SystemExit):
        assert info.value.code == 2
        text = capsys.readouterr().err
    else:
        text = str(info.value)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# ---- S4: options with no effect on the chosen data / protocol


@pytest.mark.parametrize(("args", "named"), [
    (["--protocol", "retrain-cnn"], "--protocol retrain-cnn"),
    (["--model-size", "1268"], "--model-size 1268"),
    (["--init", "he"], "--init he"),
    (["--data-dir", "mnist_idx"], "--data-dir mnist_idx"),
    (["--protocol", "retrain-cnn", "--model-size", "1268", "--init", "he"],
     "--protocol retrain-cnn, --model-size 1268, --init he"),
])
def test_s4_refuses_mnist_options_on_embeddings(args, named, tmp_path, capsys):
    message = _refused(capsys, "data_scaling", ["--smoke-test", "--embeddings", *_embeddings(tmp_path), *args])
    assert named in message and "--embeddings" in message and "MNIST" in message


@pytest.mark.parametrize(("args", "named", "applies"), [
    (["--heads", "linear"], "--heads linear", "--embeddings"),
    (["--equal-steps"], "--equal-steps", "--protocol retrain-cnn"),  # fixed features: the reference CNN trains once
    (["--heads", "linear", "--equal-steps", "--fractions", "1.0"], "--heads linear", "--embeddings"),  # the review's
    (["--protocol", "retrain-cnn", "--equal-steps", "--epochs", "None"], "--equal-steps", "--epochs"),
])
def test_s4_refuses_options_with_no_effect_on_mnist(args, named, applies, capsys):
    message = _refused(capsys, "data_scaling", ["--smoke-test", *args])
    assert named in message and applies in message


@pytest.mark.parametrize("args", [
    [], ["--paper"], ["--smoke-test"],
    ["--paper", "--embeddings", "EMB"], ["--smoke-test", "--embeddings", "EMB", "--heads", "linear", "--equal-steps"],
    ["--protocol", "retrain-cnn", "--model-size", "1268", "--init", "he", "--equal-steps"],
    ["--paper", "--protocol", "retrain-cnn", "--model-size", "1268", "--init", "he", "--data-dir", "mnist_idx"],
    ["--smoke-test", "--model-size", "1268", "--init", "he"],  # fixed features: the reference CNN's size and init
])
def test_s4_presets_and_options_that_apply_still_parse(args, tmp_path):
    if "EMB" in args:
        i = args.index("EMB")
        args = [*args[:i], *_embeddings(tmp_path), *args[i + 1:]]
    cfg = _parse("data_scaling", args)
    assert cfg.trials()


def test_s4_says_what_it_trained():
    """The line printed beside S4's results: fixed features train the reference CNN once at --epochs (never
    "x 1/fraction"); retrain-cnn with --equal-steps gives each fraction's epochs; embeddings train heads."""
    from studies.data_scaling import DataScaling, describe_training

    line = describe_training(DataScaling(fractions=(1.0,), epochs=1))
    assert "reference LeNet-600 trained once on all the data for 1 epoch" in line
    assert "1/fraction" not in line and "linear head per fraction, 100 epochs" in line
    assert "50 epochs (the paper's)" in describe_training(DataScaling(epochs=None))
    line = describe_training(DataScaling(fractions=(0.1, 1.0), protocol="retrain-cnn", model_size=1268, epochs=2,
                                         equal_steps=True))
    assert "LeNet-1268 trained on each fraction" in line and "0.1: 20, 1: 2" in line
    line = describe_training(DataScaling(protocol="retrain-cnn", model_size=1268, epochs=None))
    assert "LeNet-1268 trained on each fraction for 100 epochs (Table 3)" in line


def test_s4_embeddings_line_names_the_heads_not_a_cnn(tmp_path):
    from studies.data_scaling import describe_training

    cfg = _parse("data_scaling", ["--smoke-test", "--embeddings", *_embeddings(tmp_path), "--heads", "linear"])
    line = describe_training(cfg)
    assert "CNN" not in line and "linear head trained on each fraction for 1 epoch" in line


# ---- the embedding options without embeddings (S5 on MNIST pixels; every study with --embeddings)


@pytest.mark.parametrize(("args", "named", "applies"), [
    (["--holdout", "7"], "--holdout 7", "--embeddings"),
    (["--clip-arch", "NOPE"], "--clip-arch NOPE", "--image-folder"),
    (["--clip-pretrained", "None"], "--clip-pretrained None", "--image-folder"),
    (["--holdout", "7", "--clip-arch", "NOPE"], "--clip-arch NOPE, --holdout 7", "--image-folder"),
    (["--embeddings", "EMB", "--clip-arch", "NOPE"], "--clip-arch NOPE", "--image-folder"),
])
def test_s5_refuses_embedding_options_that_have_no_effect(args, named, applies, tmp_path, capsys):
    if "EMB" in args:
        i = args.index("EMB")
        args = [*args[:i], *_embeddings(tmp_path), *args[i + 1:]]
    message = _refused(capsys, "neighbourhood_size", ["--smoke-test", *args])
    assert named in message and applies in message


def test_embedding_options_that_apply_still_parse(tmp_path):
    cfg = _parse("neighbourhood_size", ["--smoke-test", "--embeddings", *_embeddings(tmp_path), "--holdout", "4"])
    assert cfg.trials()[0].source.holdout == 4
    cfg = _parse("neighbourhood_size", ["--image-folder", "tr", "te", "--clip-arch", "RN50", "--holdout", "4"])
    assert (cfg.trials()[0].source.arch, cfg.trials()[0].source.holdout) == ("RN50", 4)
    for name in ("neighbourhood_size", "mlp_scaling", "local_vs_global", "concept_space"):
        for preset in ([], ["--paper"], ["--smoke-test"]):
            _parse(name, preset)


# ---- --ttt-lr refused before the CNN trains


@pytest.mark.parametrize("lr", ["-1", "0", "inf", "nan"])
def test_s1_refuses_a_bad_ttt_lr_before_work(lr, tmp_path, no_work):
    import studies.model_scaling as study

    with pytest.raises(ConfigError, match=r"ttt_lr \(--ttt-lr\) must be a finite number > 0"):
        study.main(["--smoke-test", "--ttt-lr", lr, "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_s5_names_ttt_lr_not_an_internal_field(tmp_path, no_work):
    import studies.neighbourhood_size as study

    with pytest.raises(ConfigError, match=r"ttt_lr \(--ttt-lr\) must be a finite number > 0, got -1"):
        study.main(["--smoke-test", "--ttt-lr", "-1", "--out-dir", str(tmp_path / "out")])


# ---- tune_ttt: the other studies' checks before work, and the search space against the subsample


def test_tune_ttt_refuses_a_fused_engine_on_cpu_before_work(tmp_path, no_work, mnist, monkeypatch):
    import studies.tune_ttt as study

    monkeypatch.setattr(study, "load_mnist", lambda *_: mnist)
    with pytest.raises(ConfigError, match=r"engine 'fused-ieee' is a Triton GPU engine.*--engine"):
        study.main(["--smoke-test", "--engine", "fused-ieee", "--device", "cpu", "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_tune_ttt_refuses_a_fraction_smaller_than_the_search_s_largest_k(tmp_path, no_work, mnist, monkeypatch):
    import studies.tune_ttt as study

    monkeypatch.setattr(study, "load_mnist", lambda *_: mnist)
    with pytest.raises(ConfigError) as info:
        study.main(["--smoke-test", "--fraction", "0.001", "--out-dir", str(tmp_path / "out")])
    message = str(info.value)
    assert "--fraction 0.001" in message and "50 of the 50000 training images" in message and "ttt_k 400" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(WorkStarted):  # 40 images a class hold the search's largest k: the checks pass, Ray starts
        study.main(["--smoke-test", "--fraction", "0.008", "--out-dir", str(tmp_path / "out")])


@pytest.mark.parametrize(("option", "named"), [("--samples", "--samples must be >= 1"),
                                               ("--concurrent", "--concurrent must be >= 1")])
def test_tune_ttt_refuses_no_samples_or_no_concurrency_at_parse(option, named, capsys):
    assert named in _refused(capsys, "tune_ttt", ["--smoke-test", option, "0"])


def test_tune_ttt_refuses_cuda_on_a_cluster_without_gpus_before_the_search(tmp_path, mnist, monkeypatch):
    """As run_study does: its trials would each wait for a GPU that never comes."""
    import contextlib

    import studies.tune_ttt as study

    monkeypatch.setattr(study, "load_mnist", lambda *_: mnist)
    monkeypatch.setattr(study, "ray_session", lambda *_: contextlib.nullcontext())
    monkeypatch.setattr("harness.distributed.runtime.cluster_offers_gpus", lambda: False)  # check_cluster asks it
    monkeypatch.setattr(study, "search_trials", _spy)
    with pytest.raises(ConfigError, match="--device cuda, but no node of this Ray cluster has a GPU"):
        study.main(["--smoke-test", "--device", "cuda", "--out-dir", str(tmp_path / "out")])


def test_s1_refuses_an_infinite_train_lr_before_work(tmp_path, no_work):
    import studies.model_scaling as study

    with pytest.raises(ConfigError, match=r"train_lr \(--train-lr\) must be a finite number > 0, got inf"):
        study.main(["--smoke-test", "--train-lr", "inf", "--out-dir", str(tmp_path / "out")])
