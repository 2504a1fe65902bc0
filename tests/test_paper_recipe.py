"""The paper's own recipe (its code, where the text is silent): standardised inputs, the stratified split,
PyTorch's default init at --paper, dead networks reported, S4's fixed-feature protocol, S7's ten heads,
training on the trial's device, bootstrap standard errors and the paper's numbers beside ours."""

from __future__ import annotations

import dataclasses
import importlib
import sys

import numpy as np
import polars as pl
import pytest
import torch

from harness.data.mnist import MNIST_MEAN, MNIST_STD, stratified_split
from harness.models.lenet import S1_SIZES, LeNet, dead_features, lenet_for_size
from harness.models.training import TrainConfig, train_classifier
from harness.results.paper import beside_paper, ours
from harness.results.schema import summarise
from harness.trials import data_scaling as s4
from harness.trials import mnist as s1
from harness.trials.local_vs_global import LocalVsGlobalConfig, local_vs_global_trial
from harness.trials.mnist import DEAD_FEATURES, MnistTrialConfig, mnist_trial, report_dead_networks, train_lenet


def _study(name: str):
    sys.path.insert(0, str(s1.Path(__file__).resolve().parents[1]))
    return importlib.import_module(f"studies.{name}")


def test_mnist_inputs_are_standardised_with_the_papers_constants(mnist):
    assert (mnist.pixel_mean, mnist.pixel_std) == (0.1307, 0.3081) == (MNIST_MEAN, MNIST_STD)
    model = LeNet(lenet_for_size(600), pixel_mean=mnist.pixel_mean, pixel_std=mnist.pixel_std)
    images = torch.from_numpy(mnist.test_x[:5])
    expected = (images.double() / 255.0 - 0.1307) / 0.3081  # transforms.ToTensor + Normalize((0.1307,), (0.3081,))
    got = model.standardise(images)
    assert got.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(got[:, 0].numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(model.features(images).numpy(), model.trunk(got).detach().numpy())


def test_train_validation_split_is_stratified_and_fixed(mnist):
    labels = np.concatenate([mnist.train_y, mnist.val_y])
    counts = np.bincount(labels, minlength=10)
    assert mnist.train_y.size == 50_000 and mnist.val_y.size == 10_000
    np.testing.assert_allclose(np.bincount(mnist.val_y, minlength=10), counts * 10_000 / 60_000, atol=1)
    train, val = stratified_split(labels, 10_000)
    assert np.intersect1d(train, val).size == 0 and train.size + val.size == labels.size
    again = stratified_split(labels, 10_000)  # the split never depends on a trial's seed
    np.testing.assert_array_equal(val, again[1])


def test_paper_preset_uses_pytorchs_default_init():
    study = _study("model_scaling")
    trials = study.PRESETS["paper"].trials()
    assert sorted({t.model_size for t in trials}) == sorted(S1_SIZES) and {t.init for t in trials} == {"pytorch"}
    spec = lenet_for_size(1268)
    torch.manual_seed(3)
    model = LeNet(spec, init="pytorch")
    torch.manual_seed(3)
    conv1 = torch.nn.Conv2d(1, spec.conv1_channels, spec.conv1_kernel)  # the paper's FlexibleLeNet, untouched
    conv2 = torch.nn.Conv2d(spec.conv1_channels, spec.conv2_channels, spec.conv2_kernel)
    for ours_, theirs in ((model.trunk[0], conv1), (model.trunk[3], conv2)):
        np.testing.assert_array_equal(ours_.weight.detach().numpy(), theirs.weight.detach().numpy())
        np.testing.assert_array_equal(ours_.bias.detach().numpy(), theirs.bias.detach().numpy())
    torch.manual_seed(3)
    he = LeNet(spec, init="he")
    assert not torch.equal(he.trunk[0].weight, conv1.weight) and torch.all(he.trunk[0].bias == 0.01)


def test_paper_preset_trains_as_table3_and_the_default_says_how_it_differs():
    study = _study("model_scaling")
    for t in study.PRESETS["paper"].trials():
        r, spec = t.resolved(), lenet_for_size(t.model_size)
        assert (r.epochs, r.train_lr, r.train_batch_size, r.train_schedule) == (
            spec.epochs, spec.lr, spec.batch_size, "constant")
    default = study.ModelScaling()
    assert {(t.resolved().train_lr, t.train_schedule) for t in default.trials()} == {(3e-3, "cosine")}
    assert "the paper, and --paper: Table 3's rate, constant" in study.describe_training(default)
    assert study.describe_training(study.PRESETS["paper"]).endswith("(the paper's recipe)")
    with pytest.raises(s1.ConfigError, match="train_schedule"):
        MnistTrialConfig(model_size=280, train_schedule="linear")  # type: ignore[arg-type]


def test_cosine_schedule_decays_the_steps_to_nothing():
    def movement_per_epoch(schedule: str) -> list[float]:
        torch.manual_seed(0)
        x, y = torch.randn(512, 20), torch.randint(0, 4, (512,))
        model = torch.nn.Linear(20, 4)
        last = [torch.cat([p.detach().flatten() for p in model.parameters()])]
        moves: list[float] = []

        def on_epoch(epoch: int, loss: float) -> None:
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            moves.append(float((now - last[0]).norm()))
            last[0] = now

        train_classifier(model, x, y, TrainConfig(0.05, 64, 6, schedule=schedule), on_epoch=on_epoch)  # type: ignore[arg-type]
        return moves

    constant, cosine = movement_per_epoch("constant"), movement_per_epoch("cosine")
    assert cosine[0] > 0.8 * constant[0]  # the first epoch at nearly the full rate
    assert cosine[-1] < 0.1 * cosine[0] and constant[-1] > 0.2 * constant[0]  # the last at nearly none


def test_dead_network_is_reported_and_left_out_only_when_asked(mnist, capsys):
    # on the CPU this seed's one-channel net dies in training under PyTorch's init (on an H200 the same seed
    # trains alive: the GPU's kernels sum in another order), so the trial is pinned to the CPU
    base = MnistTrialConfig(model_size=280, seed=0, epochs=1, fraction=0.2, test_points=60, init="pytorch",
                            device="cpu")
    rows = mnist_trial(base, mnist)
    dead = rows.filter(pl.col("metric") == DEAD_FEATURES)
    assert dead.height == 1 and dead["value"][0] == 1.0 and dead["point_id"][0] == -1
    error = rows.filter((pl.col("method") == "global") & (pl.col("metric") == "error"))["value"].mean()
    assert error > 0.75  # one class for every input
    kept = report_dead_networks(rows, exclude=False)
    assert kept.equals(rows) and "came out dead" in capsys.readouterr().out
    dropped = report_dead_networks(rows, exclude=True)
    assert dropped.is_empty() and "left out of the summary as asked" in capsys.readouterr().out
    alive = mnist_trial(dataclasses.replace(base, init="he"), mnist)
    assert alive.filter(pl.col("metric") == DEAD_FEATURES)["value"][0] < 1.0
    assert report_dead_networks(alive, exclude=True).equals(alive) and capsys.readouterr().out == ""


def test_dead_features_counts_units_zero_on_every_image():
    x = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(dead_features(x), [True, False, True])


def test_s4_retrains_the_head_on_fixed_features(mnist, tmp_path, monkeypatch):
    trained = []
    real = s1.train_lenet
    monkeypatch.setattr(s1, "train_lenet", lambda cfg, images, on_epoch=None, checkpoint=None: trained.append(cfg)
                        or real(cfg, images, on_epoch, checkpoint))
    ref = dataclasses.replace(s4.REFERENCE_CNN, epochs=1, init="he")
    cfgs = [s4.FixedFeaturesConfig(fraction=f, reference=ref, test_points=40, ttt_steps=20, head_epochs=3,
                                   cache_dir=str(tmp_path)) for f in (0.05, 1.0)]
    small, full = (s4.fixed_features_trial(c, mnist) for c in cfgs)
    assert len(trained) == 1 and trained[0].model_size == 600 and trained[0].fraction == 1.0  # the trunk: once
    feats, w_ref, _ = s1.mnist_features(cfgs[0].reference_config(), mnist)
    for rows, cfg in ((small, cfgs[0]), (full, cfgs[1])):
        hp = rows.filter(pl.col("method") == "global")["hparams"][0]
        n = s4.class_balanced_subsample(feats.train_y, cfg.fraction, seed=0).size
        assert f'"train_points": {n}' in hp and '"protocol": "fixed-features"' in hp
        assert set(rows["model_size"]) == {600} and set(rows["fraction"]) == {cfg.fraction}
    idx = s4.class_balanced_subsample(feats.train_y, 0.05, seed=0)
    w_small, _ = s4.train_linear_head(feats.train_x[idx], feats.train_y[idx], 10, cfgs[0], torch.device("cpu"))
    w_full, _ = s4.train_linear_head(feats.train_x, feats.train_y, 10, cfgs[1], torch.device("cpu"))
    assert not np.allclose(w_small, w_full) and not np.allclose(w_full, w_ref)  # a new head per fraction


def test_s7_scores_ten_ttt_heads_on_the_whole_test_set(mnist, tmp_path):
    cfg = LocalVsGlobalConfig(model_size=280, epochs=1, init="he", test_points=30, ttt_steps=5, global_heads=10,
                              cache_dir=str(tmp_path))
    rows = local_vs_global_trial(cfg, mnist)
    heads = rows.filter(pl.col("metric") == "accuracy_test_set")
    assert heads.height == 10 and heads["point_id"].n_unique() == 10
    study = _study("local_vs_global")
    assert study.PRESETS["paper"].sizes == S1_SIZES and study.PRESETS["paper"].global_heads == 10


def test_training_runs_where_the_trial_computes_and_is_bit_identical_on_cpu(mnist):
    cfg = MnistTrialConfig(model_size=280, seed=4, epochs=1, fraction=0.05, device="cpu", init="he")
    a, _ = train_lenet(cfg, mnist)
    b, _ = train_lenet(cfg, mnist)
    assert all(p.device.type == "cpu" for p in a.parameters())
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    if torch.cuda.is_available():
        g, _ = train_lenet(dataclasses.replace(cfg, device="cuda"), mnist)
        assert all(p.device.type == "cuda" for p in g.parameters())
        rows = mnist_trial(dataclasses.replace(cfg, device="cuda", test_points=20), mnist)
        assert '"train_device": "cuda' in rows.filter(pl.col("method") == "global")["hparams"][0]
    rows = mnist_trial(dataclasses.replace(cfg, test_points=20), mnist)
    assert '"train_device": "cpu"' in rows.filter(pl.col("method") == "global")["hparams"][0]


def test_summary_reports_the_bootstrap_standard_error():
    rng = np.random.default_rng(0)
    p, n = 0.8, 4000
    values = (rng.random(n) < p).astype(float)
    df = pl.DataFrame({"method": ["ttt"] * n, "metric": ["accuracy"] * n, "seed": [0] * n,
                       "point_id": np.arange(n), "value": values})
    row = summarise(df, by=["method", "metric"], resamples=2000).row(0, named=True)
    assert row["se"] == pytest.approx(np.sqrt(p * (1 - p) / n), rel=0.08)
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 1.645 * row["se"], rel=0.1)


def test_papers_table2_is_written_beside_ours():
    table = pl.DataFrame({"model_size": [280, 280, 1268], "method": ["global", "ttt", "global"],
                          "metric": ["accuracy"] * 3, "mean": [0.9, 0.95, 0.97], "ci_low": [0.8] * 3,
                          "ci_high": [0.99] * 3, "se": [0.01] * 3, "n": [10] * 3})
    both = beside_paper(table, "local_vs_global", dataset="mnist", model_size=280)
    paper = both.filter(pl.col("source") == "paper").sort("method")
    assert paper["mean"].to_list() == pytest.approx([0.9857, 0.9901]) and paper["se"].to_list() == pytest.approx([0.0012, 0.0010])
    assert set(paper["model_size"]) == {280} and ours(both).height == 3  # only what this run computed
    assert set(ours(both)["dataset"]) == {"mnist"}  # the run's own coordinate, so the two sides match
