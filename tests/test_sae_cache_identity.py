"""What an SAE's caches are keyed by (S8, S9): the global heads cached beside an SAE checkpoint belong to that SAE
(another SAE written to the same path, or to a path differing only in its last suffix, trains its own), one
--sae-checkpoint is refused for several --seeds before any work, and the device is part of the SAE checkpoint's
identity (a resume on another device is refused naming the field) and of the cache keys."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_inputs import WORK, _ray_sessions, _spy
from test_concept_bad_inputs import SAE_WORK

from harness.data.mnist import ImageSplits
from harness.errors import ConfigError
from harness.models.sae import JumpReLUSAEConfig, TopKSAEConfig
from harness.models.sae_training import (
    JumpReLUTraining,
    SAETrainConfig,
    TopKTraining,
    train_jumprelu_sae,
    train_topk_sae,
)
from harness.models.training import TrainConfig
from harness.ttt.linear import HeadTTTConfig
from harness.ttt.masked import MaskedTTTConfig


def _head_trainings(monkeypatch: pytest.MonkeyPatch, module: str) -> list[int]:
    """Counts the global heads `module` trains (the real training still runs): one entry per head."""
    import harness.trials.concept_space as concept_space

    real, calls = concept_space.train_linear_head, []

    def counted(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(f"{module}.train_linear_head", counted)
    return calls


# ------------------------------------------------------------------ S8: tiny synthetic trials
def _s8_trial(tmp: Path, checkpoint: Path, **changes: object):
    """One tiny S8 trial on CPU (300 synthetic points in 8 dimensions, a 64-concept SAE), its SAE at `checkpoint`."""
    import studies.concept_space as study

    options = dataclasses.replace(
        study.PRESETS["smoke_test"], synthetic_concepts=32, synthetic_dim=8, synthetic_clusters=32,
        synthetic_classes=4, synthetic_train=300, synthetic_test=40, sae_epochs=2, sae_batch_size=100, sae_k_start=8,
        sae_k_ramp_steps=2, sae_warmup_steps=2, head_epochs=2, ttt_k=5, ttt_steps=3, tv_ranks=3, test_points=10,
        device="cpu", out_dir=str(tmp / "out"), sae_checkpoint=str(checkpoint), **changes)
    return options.trials()[0]


def test_s8_an_sae_retrained_at_the_same_path_trains_its_own_heads(tmp_path, monkeypatch):
    from harness.trials.concept_space import concept_space_trial

    trained = _head_trainings(monkeypatch, "harness.trials.concept_space")
    ckpt = tmp_path / "my_sae.pt"
    first = _s8_trial(tmp_path, ckpt)
    concept_space_trial(first)
    assert len(trained) == 3  # Φ̂, Ψ̂ and Ψ
    concept_space_trial(first)
    assert len(trained) == 3  # the same SAE: its heads are read back
    ckpt.unlink()  # as the refusal of a checkpoint of other options advises: remove it to train anew
    other = _s8_trial(tmp_path, ckpt, sae_lr=1e-3)
    assert other.head == first.head and other.sae_train != first.sae_train
    concept_space_trial(other)
    assert len(trained) == 6  # another SAE: the old SAE's heads are not its heads


def test_s8_checkpoints_whose_names_differ_in_the_last_suffix_have_their_own_heads(tmp_path, monkeypatch):
    from harness.trials.concept_space import concept_space_trial

    trained = _head_trainings(monkeypatch, "harness.trials.concept_space")
    concept_space_trial(_s8_trial(tmp_path, tmp_path / "sae.v1"))
    concept_space_trial(_s8_trial(tmp_path, tmp_path / "sae.v2", sae_lr=1e-3))
    assert len(trained) == 6
    for name in ("sae.v1", "sae.v2"):
        assert len(list(tmp_path.glob(f"{name}.heads-*.npz"))) == 1, sorted(p.name for p in tmp_path.iterdir())


# ------------------------------------------------------------------ S9: tiny images, no MNIST download
def _tiny_images() -> ImageSplits:
    g = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return g.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10

    return ImageSplits(*split(200), *split(20), *split(30), source="tiny random images")


def _s9_trial(checkpoint: Path, sae_lr: float = 3e-3):
    from harness.trials.mnist_sae import MnistSAEConfig

    return MnistSAEConfig(
        cnn_epochs=1, ttt=HeadTTTConfig(lr=0.1, steps=3, k=5), sae=JumpReLUSAEConfig(width=32),
        sae_train=SAETrainConfig(lr=sae_lr, batch_size=100, epochs=1, warmup_steps=1, schedule_steps=100),
        sae_checkpoint=str(checkpoint), head=TrainConfig(lr=1e-2, batch_size=100, epochs=1),
        masked=MaskedTTTConfig(lr=0.05, steps=3, k=5), test_points=10, device="cpu")


def test_s9_an_sae_retrained_at_the_same_path_trains_its_own_head(tmp_path, monkeypatch):
    from harness.trials.mnist_sae import mnist_sae_trial

    trained = _head_trainings(monkeypatch, "harness.trials.mnist_sae")
    images, ckpt = _tiny_images(), tmp_path / "my_sae.pt"
    mnist_sae_trial(_s9_trial(ckpt), images)
    mnist_sae_trial(_s9_trial(ckpt), images)
    assert len(trained) == 1  # trained once, then read back
    ckpt.unlink()
    mnist_sae_trial(_s9_trial(ckpt, sae_lr=1e-3), images)
    assert len(trained) == 2
    assert len(list(tmp_path.glob("my_sae.pt.heads-*.npz"))) == 2


# ------------------------------------------------------------------ one checkpoint file, several seeds
def _s8_main(tmp: Path, *args: str) -> object:
    import studies.concept_space as study

    return study.main([*args, "--out-dir", str(tmp / "out")])


def _s9_main(tmp: Path, *args: str) -> object:
    import studies.mnist_sae as study

    return study.main([*args, "--out-dir", str(tmp / "out")])


@pytest.mark.parametrize("main", [_s8_main, _s9_main], ids=["s8", "s9"])
def test_one_sae_checkpoint_for_several_seeds_is_refused_before_any_work(main: Callable[..., object], tmp_path,
                                                                          monkeypatch, capsys):
    import ray

    for target in (*WORK, *SAE_WORK):
        monkeypatch.setattr(target, _spy(target))
    ray_before, sessions_before = ray.is_initialized(), _ray_sessions()
    with pytest.raises(SystemExit) as err:  # the options' own check, reported by the parser as for any bad option
        main(tmp_path, "--smoke-test", "--seeds", "0", "1", "--sae-checkpoint", str(tmp_path / "sae.pt"))
    printed = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().err).split())  # the parser's box, unwrapped
    assert err.value.code == 2
    assert "--sae-checkpoint names one SAE file, but --seeds gives 2 seeds [0, 1]" in printed, printed
    assert ray.is_initialized() == ray_before and _ray_sessions() == sessions_before
    assert not (tmp_path / "out").exists() and not (tmp_path / "sae.pt").exists()


def test_study_options_with_one_sae_checkpoint_for_several_seeds_are_refused_at_construction(tmp_path):
    import studies.concept_space as s8
    import studies.mnist_sae as s9

    for options in (s8.ConceptSpace, s9.MnistSAE):
        with pytest.raises(ConfigError, match=r"--sae-checkpoint names one SAE file, but --seeds gives 3 seeds "
                                              r"\[0, 1, 2\]"):
            options(seeds=(0, 1, 2), sae_checkpoint=str(tmp_path / "sae.pt"))


def test_one_sae_checkpoint_for_one_seed_and_the_cache_for_several_are_accepted(tmp_path):
    import studies.concept_space as s8
    import studies.mnist_sae as s9

    for study in (s8, s9):
        assert len(study.parse(["--seeds", "3", "--sae-checkpoint", str(tmp_path / "sae.pt")]).trials()) == 1
        trials = study.parse(["--seeds", "0", "1"]).trials()
        assert len({t.checkpoint_path(8) if study is s8 else t.checkpoint_path() for t in trials}) == 2


# ------------------------------------------------------------------ the device
def _topk_run(path: Path) -> None:
    x = torch.nn.functional.normalize(torch.randn(60, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    train_topk_sae(x, TopKSAEConfig(6, 12, k=2), SAETrainConfig(lr=1e-2, batch_size=20, epochs=1, warmup_steps=1,
                                                                schedule_steps=10),
                   TopKTraining(k_start=4, k_ramp_steps=2), checkpoint=path)


def _jumprelu_run(path: Path) -> None:
    images = torch.from_numpy(_tiny_images().train_x[:40])
    train_jumprelu_sae(images, JumpReLUSAEConfig(width=16), SAETrainConfig(lr=1e-2, batch_size=20, epochs=1,
                                                                           warmup_steps=1, schedule_steps=10),
                       JumpReLUTraining(), checkpoint=path)


def _as_if_made_on_cuda(path: Path) -> None:
    state = torch.load(path, weights_only=False)
    state["identity"]["device"] = "cuda"
    torch.save(state, path)


@pytest.mark.parametrize("run", [_topk_run, _jumprelu_run], ids=["top-k", "jumprelu"])
def test_an_sae_checkpoint_of_another_device_is_refused_naming_the_field(run: Callable[[Path], None], tmp_path):
    path = tmp_path / "sae.pt"
    run(path)
    assert torch.load(path, weights_only=False)["identity"]["device"] == "cpu"
    run(path)  # the same device: the finished checkpoint is the SAE
    _as_if_made_on_cuda(path)
    with pytest.raises(ConfigError, match=r"sae\.pt was made with another configuration.*\n.*device: checkpoint "
                                          r"'cuda', now 'cpu'"):
        run(path)


def test_a_checkpoint_made_before_the_device_was_recorded_is_still_resumed(tmp_path):
    path = tmp_path / "sae.pt"
    _topk_run(path)
    state = torch.load(path, weights_only=False)
    del state["identity"]["device"]  # as written before the field existed
    torch.save(state, path)
    _topk_run(path)  # accepted: nothing says it was made elsewhere


def test_s8_a_given_checkpoint_of_another_device_is_refused_before_any_work(tmp_path, monkeypatch):
    """The study checks a given checkpoint against --device before Ray starts (a checkpoint of this very config
    and data, stamped as made on CUDA)."""
    for target in (*WORK, *SAE_WORK):
        monkeypatch.setattr(target, _spy(target))
    import studies.concept_space as study
    from harness.models.sae_training import CHECKPOINT_FORMAT, checkpoint_identity, data_fingerprint
    from harness.trials.concept_space import concept_embeddings

    path = tmp_path / "sae.pt"
    trial = study.parse(["--smoke-test", "--sae-checkpoint", str(path), "--device", "cpu"]).trials()[0]
    data = data_fingerprint(torch.from_numpy(concept_embeddings(trial).train))
    identity = checkpoint_identity(trial.sae_config(32), trial.sae_train, trial.sae_topk, data)
    identity["device"] = "cuda"
    torch.save({"format": CHECKPOINT_FORMAT, "identity": identity, "step": 1, "model": {}, "optimizer": {}}, path)
    with pytest.raises(ConfigError, match=r"sae\.pt was made with another configuration.*\n.*device: checkpoint "
                                          r"'cuda', now 'cpu'"):
        _s8_main(tmp_path, "--smoke-test", "--sae-checkpoint", str(path), "--device", "cpu")
    assert not (tmp_path / "out").exists()


def test_the_sae_cache_keys_name_the_device(tmp_path, monkeypatch):
    from harness.trials.concept_space import ConceptSpaceConfig
    from harness.trials.mnist_sae import MnistSAEConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # None: the device torch sees (here the CPU)
    cache = str(tmp_path / "cache")
    s8 = {d: ConceptSpaceConfig(device=d, cache_dir=cache).checkpoint_path(64) for d in ("cpu", "cuda", None)}
    s9 = {d: MnistSAEConfig(device=d, cache_dir=cache).checkpoint_path() for d in ("cpu", "cuda", None)}
    for paths in (s8, s9):
        assert paths["cpu"] != paths["cuda"]
        assert paths[None] == paths["cpu"]
