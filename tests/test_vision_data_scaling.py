"""S4: class-balanced fractions, retrieval from the subsample only, and fraction 1 == the S1 trial."""

import dataclasses

import numpy as np
import polars as pl

from harness.data.subsample import class_balanced_subsample
from harness.features.cache import FeatureSplits
from harness.trials.embedding_head import EmbeddingHeadConfig, head_features
from harness.trials.mnist import MnistTrialConfig, mnist_features, mnist_trial
from studies.data_scaling import MNIST_TTT, DataScaling

RUN_COLUMNS = ["study", "config_hash", "wall_time_s", "phase_seconds", "git_sha"]


def test_class_balanced_counts_on_mnist(mnist):
    for fraction, per_class in ((0.01, 50), (0.1, 500), (0.3, 1500)):
        idx = class_balanced_subsample(mnist.train_y, fraction, seed=3)
        np.testing.assert_array_equal(np.bincount(mnist.train_y[idx], minlength=10), per_class)
        assert np.unique(idx).size == idx.size
    assert class_balanced_subsample(mnist.train_y, 1.0).size == mnist.train_y.size


def test_fraction_one_equals_the_s1_trial(mnist, tmp_path):
    study = DataScaling(fractions=(1.0,), protocol="retrain-cnn", model_size=280, epochs=0, test_points=30,
                        out_dir=str(tmp_path))
    s4 = study.trials()[0]
    s4 = dataclasses.replace(s4, ttt_steps=40)  # shorter than 500 for the test; both sides use the same
    s1 = MnistTrialConfig(model_size=280, epochs=0, test_points=30, ttt_k=MNIST_TTT["ttt_k"], ttt_lr=MNIST_TTT["ttt_lr"],
                          ttt_steps=40)
    assert (s4.fraction, s4.ttt_k, s4.ttt_lr, s4.epochs) == (1.0, 80, 0.02, 0)
    a = mnist_trial(s4, mnist)
    b = mnist_trial(s1, mnist)
    assert set(a["study"]) == {"data_scaling"} and set(b["study"]) == {"model_scaling"}
    a, b = a.drop(RUN_COLUMNS), b.drop(RUN_COLUMNS)
    assert a.height == 30 * 5 + 1  # and the dead-features row
    assert a.equals(b)


def test_equal_steps_epochs():
    cfg = DataScaling(epochs=3, protocol="retrain-cnn", equal_steps=True)
    assert [cfg.epochs_at(f) for f in (1.0, 0.3, 0.1, 0.01)] == [3, 10, 30, 300]
    assert dataclasses.replace(cfg, equal_steps=False).epochs_at(0.01) == 3


def test_mnist_retrieval_index_holds_only_the_subsample(mnist):
    feats, _, _ = mnist_features(MnistTrialConfig(model_size=280, epochs=0, fraction=0.02), mnist)
    assert feats.train_x.shape[0] == 1000
    np.testing.assert_array_equal(np.bincount(feats.train_y, minlength=10), 100)
    assert feats.test_x.shape[0] == 10_000  # the test set is never subsampled


def test_embedding_trial_retrieves_from_the_subsample_only():
    """Linear head: the TTT features are the embeddings, so the index must be exactly the subsample's rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 100)
    splits = FeatureSplits(x, y, x[:20], y[:20], x[:30], y[:30])
    cfg = EmbeddingHeadConfig(hidden=None, epochs=1, fraction=0.25, seed=5, ttt_k=10, majority_k=0)
    feats, W, c = head_features(cfg, splits)
    idx = class_balanced_subsample(y, 0.25, seed=5)
    np.testing.assert_array_equal(feats.train_x, x[idx])
    np.testing.assert_array_equal(feats.train_y, y[idx])
    assert W.shape == (4, 6) and c.shape == (4,)
    assert pl.Series(feats.train_y).value_counts()["count"].to_list() == [25] * 4
