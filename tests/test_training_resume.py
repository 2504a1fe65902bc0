"""Nothing computed is lost: a global training killed part way resumes from its last finished epoch and ends
exactly where an uninterrupted one ends (train_classifier's checkpoint), also through a trial's feature cache;
a checkpoint of another training is refused naming its file."""

import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.data.feature_splits import FeatureSplits
from harness.models.mlp import head_spec
from harness.models.training import TrainConfig, train_classifier
from harness.trials.embedding_head import EmbeddingHeadConfig, head_features
from harness.trials.mnist import MnistTrialConfig, mnist_features


class Killed(Exception):
    pass


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 6, generator=g), torch.randint(0, 3, (300,), generator=g)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def _kill_after(epoch: int, seen: list[int]):
    def on_epoch(e: int, loss: float) -> None:
        seen.append(e)
        if e == epoch:
            raise Killed

    return on_epoch


def test_resumed_training_takes_exactly_the_uninterrupted_steps(tmp_path):
    x, y = _data()
    cfg = TrainConfig(lr=0.01, batch_size=64, epochs=4, seed=3, weight_decay=1e-3, schedule="cosine")
    whole = train_classifier(_model(), x, y, cfg)  # dropout 0.5: its draws must resume where they were, not
    # where _model() leaves torch's generator
    ckpt, seen = tmp_path / "run.train.pt", []
    with pytest.raises(Killed):
        train_classifier(_model(), x, y, cfg, on_epoch=_kill_after(1, seen), checkpoint=ckpt)
    assert seen == [0, 1] and ckpt.exists()
    resumed = train_classifier(_model(), x, y, cfg, on_epoch=_kill_after(-1, seen), checkpoint=ckpt)
    assert seen == [0, 1, 2, 3]  # epochs 0 and 1 were not run again
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(whole.parameters(), _model().parameters(), strict=True))
    assert moved > 1e-2
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_checkpoint_of_another_training_is_refused_naming_it(tmp_path):
    x, y = _data()
    ckpt = tmp_path / "run.train.pt"
    cfg = TrainConfig(lr=0.01, batch_size=64, epochs=2, seed=3)
    with pytest.raises(Killed):
        train_classifier(_model(), x, y, cfg, on_epoch=_kill_after(0, []), checkpoint=ckpt)
    with pytest.raises(ConfigError, match=r"run\.train\.pt was made for another training \(cfg differ"):
        train_classifier(_model(), x, y, TrainConfig(lr=0.01, batch_size=32, epochs=2, seed=3), checkpoint=ckpt)
    with pytest.raises(ConfigError, match=r"\(n differ: checkpoint \[300\], now \[200\]"):
        train_classifier(_model(), x[:200], y[:200], cfg, checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"run\.train\.pt: not readable .*remove it to train anew"):
        train_classifier(_model(), x, y, cfg, checkpoint=ckpt)


def test_a_killed_trial_training_resumes_through_the_feature_cache(mnist, tmp_path):
    cfg = MnistTrialConfig(model_size=280, seed=2, epochs=3, fraction=0.1, cache_dir=str(tmp_path / "killed"))
    seen: list[int] = []
    with pytest.raises(Killed):
        mnist_features(cfg, mnist, on_epoch=_kill_after(1, seen))
    assert len(list((tmp_path / "killed").glob("*.train.pt"))) == 1
    feats, w, b = mnist_features(cfg, mnist, on_epoch=_kill_after(-1, seen))
    assert seen == [0, 1, 2]  # only the third epoch ran again
    assert not list((tmp_path / "killed").glob("*.train.pt"))  # removed once the features are cached

    whole = MnistTrialConfig(model_size=280, seed=2, epochs=3, fraction=0.1, cache_dir=str(tmp_path / "whole"))
    ref_feats, ref_w, ref_b = mnist_features(whole, mnist)
    np.testing.assert_array_equal(w, ref_w)
    np.testing.assert_array_equal(b, ref_b)
    np.testing.assert_array_equal(feats.test_x, ref_feats.test_x)


def test_a_killed_mlp_head_with_dropout_resumes_to_the_same_head(tmp_path):
    """Table 7's 250-unit head (dropout 0.05 ... 0.7 across sizes) through head_features' cache."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 10)) * 2
    y = rng.integers(0, 3, 600)
    x = (centres[y] + rng.normal(size=(600, 10))).astype(np.float32)
    splits = FeatureSplits(x[:400], y[:400], x[400:450], y[400:450], x[450:], y[450:])

    def cfg(folder: str) -> EmbeddingHeadConfig:
        return EmbeddingHeadConfig(hidden=250, epochs=3, device="cpu", cache_dir=str(tmp_path / folder))

    seen: list[int] = []
    with pytest.raises(Killed):
        head_features(cfg("killed"), splits, on_epoch=_kill_after(0, seen))
    feats, w, b = head_features(cfg("killed"), splits, on_epoch=_kill_after(-1, seen))
    assert seen == [0, 1, 2] and head_spec(250).dropout > 0
    ref_feats, ref_w, ref_b = head_features(cfg("whole"), splits)
    np.testing.assert_array_equal(w, ref_w)
    np.testing.assert_array_equal(b, ref_b)
    np.testing.assert_array_equal(feats.test_x, ref_feats.test_x)
