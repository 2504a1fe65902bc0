"""Bad input of S8 and S9 (issue 14), in the shape of tests/test_bad_inputs.py's table: each row must be refused
before any work (no Ray, no SAE / CNN / head training, nothing in the output folder) with a message naming the
field, option or file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_inputs import WORK, Case, _ray_sessions, _spy

from harness.errors import ConfigError

SAE_WORK = (
    "harness.models.sae_training.train_loop",  # any SAE training step
    "harness.trials.concept_space.train_linear_head",  # S8's global heads
    "harness.trials.concept_space.mnist_features",  # S8's LeNet features (mnist-cnn)
    "harness.trials.mnist_sae.mnist_features",  # S9's dense LeNet
)


def _s8(tmp: Path, *args: str) -> object:
    import studies.concept_space as study

    return study.main([*args, "--out-dir", str(tmp / "out")])


def _s9(tmp: Path, *args: str) -> object:
    import studies.mnist_sae as study

    return study.main([*args, "--out-dir", str(tmp / "out")])


def _embedding_files(tmp: Path, dim: int = 5, nan_rows: tuple[int, ...] = ()) -> list[str]:
    """train.npy / test.npy (+ labels) under tmp/in: 60 and 10 rows of `dim` floats, 3 classes."""
    folder = tmp / "in"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, n in (("train", 60), ("test", 10)):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        if name == "train":
            x[list(nan_rows), 1] = np.nan
        np.save(folder / f"{name}.npy", x)
        np.save(folder / f"{name}.labels.npy", np.arange(n) % 3)
        paths.append(str(folder / f"{name}.npy"))
    return paths


def _s8_files(tmp: Path, *args: str, dim: int = 5, nan_rows: tuple[int, ...] = ()) -> object:
    return _s8(tmp, "--embeddings", *_embedding_files(tmp, dim, nan_rows), "--holdout", "3", "--ttt-k", "5",
               "--test-points", "5", "--tv-ranks", "3", "--sae-k", "2", "--sae-k-start", "4", *args)


def _foreign_checkpoint(tmp: Path, model_cfg: object, train: object, extra: object) -> Path:
    """A checkpoint file written under another config (no training: the identity is what is compared)."""
    from harness.models.sae_training import CHECKPOINT_FORMAT, checkpoint_identity

    path = tmp / "in" / "sae.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "identity": checkpoint_identity(model_cfg, train, extra, None),
                "step": 1, "model": {}, "optimizer": {}}, path)
    return path


def _s8_other_checkpoint(tmp: Path) -> object:
    from harness.models.sae import TopKSAEConfig
    from harness.models.sae_training import SAETrainConfig, TopKTraining

    path = _foreign_checkpoint(tmp, TopKSAEConfig(input_dim=64, width=512, k=8), SAETrainConfig(), TopKTraining())
    return _s8(tmp, "--sae-checkpoint", str(path))


def _s9_other_checkpoint(tmp: Path) -> object:
    from harness.models.sae import JumpReLUSAEConfig
    from harness.models.sae_training import JumpReLUTraining
    from harness.trials.mnist_sae import SAE_TRAINING

    path = _foreign_checkpoint(tmp, JumpReLUSAEConfig(width=512), SAE_TRAINING, JumpReLUTraining())
    return _s9(tmp, "--sae-checkpoint", str(path))


def _s8_checkpoint_of_other_data(tmp: Path) -> object:
    """A checkpoint of this very config, made on other embeddings (its data fingerprint differs)."""
    import studies.concept_space as study
    from harness.models.sae_training import CHECKPOINT_FORMAT, checkpoint_identity

    path = tmp / "in" / "sae.pt"
    path.parent.mkdir()
    args = ["--smoke-test", "--sae-checkpoint", str(path)]
    trial = study.parse(args).trials()[0]
    other = {"rows": 3000, "shape": [32], "checksum": 1.0, "checksum_sq": 2.0}
    identity = checkpoint_identity(trial.sae_config(32), trial.sae_train, trial.sae_topk, other)
    torch.save({"format": CHECKPOINT_FORMAT, "identity": identity, "step": 1, "model": {}, "optimizer": {}}, path)
    return _s8(tmp, *args)


def _s8_not_a_checkpoint(tmp: Path) -> object:
    (tmp / "in").mkdir()
    (tmp / "in" / "sae.pt").write_text("not a checkpoint")
    return _s8(tmp, "--sae-checkpoint", str(tmp / "in" / "sae.pt"))


CASES = [
    Case("s8-embedding-dim-disagrees-with-the-sae", lambda t: _s8_files(t, "--sae-input-dim", "8"), ConfigError,
         r"sae_input_dim = 8 disagrees with the embeddings' dimension 5 \(precomputed embeddings: train .*train\.npy"),
    Case("s8-nan-rows", lambda t: _s8_files(t, nan_rows=(4, 9)), ConfigError, r"train\.npy: 2 row\(s\) \(rows 4, 9\)"),
    Case("s8-k-larger-than-the-training-set", lambda t: _s8(t, "--smoke-test", "--ttt-k", "5000"), ConfigError,
         r"ttt_k = 5000 is larger than the training set: the synthetic-lrh.* training split holds 3000 points"),
    Case("s8-k-larger-than-the-embedding-file", lambda t: _s8_files(t, "--ttt-k", "58"), ConfigError,
         r"ttt_k = 58 is larger than the training set: .* holds 57 points"),
    Case("s8-checkpoint-of-another-config", _s8_other_checkpoint, ConfigError,
         r"SAE checkpoint .*sae\.pt was made with another configuration.*model\.k: checkpoint 8, now 4"),
    Case("s8-checkpoint-of-other-embeddings", _s8_checkpoint_of_other_data, ConfigError,
         r"SAE checkpoint .*sae\.pt was made with another configuration.*data\.checksum: checkpoint 1\.0, now "),
    Case("s8-file-that-is-no-checkpoint", _s8_not_a_checkpoint, ConfigError,
         r"SAE checkpoint .*sae\.pt: not a readable"),
    Case("s8-ramp-wider-than-the-sae", lambda t: _s8(t, "--smoke-test", "--sae-k-start", "300"), ConfigError,
         r"k_start = 300 exceeds the SAE's width = 256 .*sae_k_start"),
    Case("s8-sae-k-beyond-width", lambda t: _s8(t, "--smoke-test", "--sae-width", "8", "--sae-k", "9"), ConfigError,
         r"TopKSAEConfig.k = 9 must be <= width = 8"),
    Case("s8-tv-ranks-beyond-classes", lambda t: _s8(t, "--smoke-test", "--tv-ranks", "11"), ConfigError,
         r"tv_ranks = 11 exceeds the 10 classes"),
    Case("s8-paper-without-embeddings", lambda t: _s8(t, "--paper"), ConfigError,
         r"--data embeddings \(the --paper setting\) needs --embeddings TRAIN TEST"),
    Case("s8-test-points-beyond-the-test-split", lambda t: _s8(t, "--smoke-test", "--test-points", "201"),
         ConfigError, r"test_points = 201 exceeds the 200 points of the test split"),
    Case("s9-k-larger-than-the-training-set", lambda t: _s9(t, "--smoke-test", "--mask-k", "50001"), ConfigError,
         r"mask_k = 50001 is larger than the training set: the MNIST training split holds 50000"),
    Case("s9-cnn-k-larger-than-the-training-set", lambda t: _s9(t, "--smoke-test", "--cnn-ttt-k", "60000"),
         ConfigError, r"cnn_ttt_k = 60000 is larger than the training set"),
    Case("s9-checkpoint-of-another-config", _s9_other_checkpoint, ConfigError,
         r"SAE checkpoint .*sae\.pt was made with another configuration.*model\.width: checkpoint 512, now 1024"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import ray

    for target in (*WORK, *SAE_WORK, *case.work):
        monkeypatch.setattr(target, _spy(target))
    ray_before, sessions_before = ray.is_initialized(), _ray_sessions()
    with pytest.raises(case.error) as err:
        case.run(tmp_path)
    printed = capsys.readouterr()
    text = f"{err.value}\n{printed.out}\n{printed.err}"
    assert case.match is not None and re.search(case.match, text, flags=re.DOTALL), text  # names field or file
    assert ray.is_initialized() == ray_before and _ray_sessions() == sessions_before  # no Ray started
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / case.out).rglob("*") if p.is_file())
    assert left == [], left  # no partial or cached file


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
