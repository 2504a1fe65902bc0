"""Data checks at load time: dataset fractions too small for one point per class, MNIST labels outside 0..9, test
classes missing from train, unreadable images (counted, printed, refused above a small share), and hold-out sizes
that cannot work (naming --holdout, before any image is encoded)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data.embeddings import load_embedding_splits
from harness.data.holdout import class_balanced_holdout
from harness.data.mnist import load_mnist_idx
from harness.data.subsample import class_balanced_subsample
from harness.errors import ConfigError
from harness.features import embedding_source
from harness.features.embedding_source import EmbeddingSource


class WorkStarted(BaseException):  # noqa: N818  a BaseException: no `except Exception` in the code swallows it
    """Raised by a spy: the bad input reached work it should have been refused before."""


def _spy(monkeypatch: pytest.MonkeyPatch, *targets: str) -> None:
    for target in targets:
        def started(*args: object, _target: str = target, **kwargs: object) -> None:
            raise WorkStarted(f"{_target} was called: the bad input reached work")

        monkeypatch.setattr(target, started)


# ---------------------------------------------------------------- dataset fractions
def test_fraction_below_one_point_per_class_is_refused():
    labels = np.repeat(np.arange(10), 5000)  # 50,000 points, as MNIST's train split
    with pytest.raises(ConfigError, match=r"fraction 1e-06 of 50000 training points in 10 classes is 0\.005 points "
                                          r"per class, which rounds to 0.* at least 0\.0002 \(one point per class\)"):
        class_balanced_subsample(labels, 1e-6)
    assert class_balanced_subsample(labels, 2e-4).size == 10  # the fraction the message names works
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\], got 1\.5"):
        class_balanced_subsample(labels, 1.5)


def test_a_short_class_gives_all_it_has_as_in_the_papers_split():
    """A class smaller than its share gives all it has and the others keep their share (the paper's
    split_dataset caps the same way): the subset is smaller than C * share, and its size is what trials record."""
    labels = np.repeat(np.arange(4), [100, 300, 300, 300])
    idx = class_balanced_subsample(labels, 0.5, seed=3)
    assert np.bincount(labels[idx]).tolist() == [100, 125, 125, 125] and np.unique(idx).size == 475
    np.testing.assert_array_equal(idx, class_balanced_subsample(labels, 0.5, seed=3))


def test_s1_tiny_fraction_is_refused_before_work(tmp_path, monkeypatch):
    import studies.model_scaling as study

    _spy(monkeypatch, "ray.init", "harness.trials.mnist.train_classifier")
    with pytest.raises(ConfigError, match=r"fraction 1e-06 of 50000 training points .* rounds to 0"):
        study.main(["--smoke-test", "--sizes", "600", "--fraction", "1e-6", "--ttt-k", "5", "--majority-k", "3",
                    "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


# ---------------------------------------------------------------- MNIST idx labels
def _write_idx(path: Path, array: np.ndarray) -> None:
    data = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _idx_folder(tmp: Path, train_labels: np.ndarray, test_labels: np.ndarray) -> Path:
    folder = tmp / "mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", np.zeros((train_labels.size, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", train_labels)
    _write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((test_labels.size, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte", test_labels)
    return folder


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_labels_outside_0_to_9_are_refused_naming_file_and_index(tmp_path, split):
    labels = np.arange(20) % 10
    bad = labels.copy()
    bad[[3, 7]] = [12, 255]
    folder = _idx_folder(tmp_path, bad if split == "train" else labels, bad if split == "test" else labels)
    name = "train-labels-idx1-ubyte\\.gz" if split == "train" else "t10k-labels-idx1-ubyte"
    with pytest.raises(ConfigError, match=rf"{name}: labels must be 0\.\.9 \(MNIST's 10 classes\); 2 of 20 are not, "
                                          r"the first at index 3: 12"):
        load_mnist_idx(folder)


# ---------------------------------------------------------------- embedding files
def _embeddings(tmp: Path, train_y: np.ndarray, test_y: np.ndarray) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name, y in (("train", train_y), ("test", test_y)):
        np.save(tmp / f"{name}.npy", rng.normal(size=(y.size, 4)).astype(np.float32))
        np.save(tmp / f"{name}.labels.npy", y)
        paths.append(tmp / f"{name}.npy")
    return paths[0], paths[1]


def test_test_classes_missing_from_train_are_refused(tmp_path):
    train, test = _embeddings(tmp_path, np.arange(12) % 3, np.array([0, 1, 5, 2, 7, 5]))
    with pytest.raises(ConfigError, match=r"test\.npy: test labels hold classes \[5, 7\] \(3 of 6 points\) that the "
                                          r"training set .*train\.npy does not have"):
        load_embedding_splits(train, test, holdout=3)
    with pytest.raises(ConfigError, match=r"test\.npy: test labels hold classes \[5, 7\]"):
        EmbeddingSource("file", str(train), str(test), holdout=3).load()


def test_default_holdout_on_a_small_file_names_the_option(tmp_path):
    train, test = _embeddings(tmp_path, np.arange(20) % 4, np.arange(8) % 4)
    with pytest.raises(ConfigError, match=r"--holdout 50000: .*holdout count must be in \(0, 20\) for 20 training "
                                          r"points"):
        EmbeddingSource("file", str(train), str(test)).load()


def test_holdout_that_empties_a_class_names_the_option():
    labels = np.repeat(np.arange(3), [10, 10, 2])
    with pytest.raises(ConfigError, match=r"--holdout 6: class 2 has 2 points, fewer than the 3 it needs .* use "
                                          r"--holdout <= 3"):
        class_balanced_holdout(labels, 6)
    keep, held = class_balanced_holdout(labels, 3)  # the count the message names fits
    assert held.size == 3 and set(labels[keep]) == {0, 1, 2}


# ---------------------------------------------------------------- image folders
TINY_VIT = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """A 2-layer open_clip ViT on 32x32 images registered under the name 'tiny-vit-checks' (random weights)."""
    import open_clip

    path = tmp_path_factory.mktemp("open_clip_cfg") / "tiny-vit-checks.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    return "tiny-vit-checks"


def _folder(root: Path, per_class: dict[str, int], corrupt: dict[str, int] | None = None) -> Path:
    rng = np.random.default_rng(0)
    for name, n in per_class.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"img{i}.png")
        for i in range((corrupt or {}).get(name, 0)):
            (d / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _image_source(tmp: Path, train: Path, test: Path, arch: str = "ViT-B-32", holdout: int = 2) -> EmbeddingSource:
    return EmbeddingSource("image-folder", str(train), str(test), holdout=holdout, arch=arch, pretrained=None,
                           cache_dir=str(tmp / "cache"))


def test_image_folders_with_different_classes_are_refused_before_encoding(tmp_path, monkeypatch):
    _spy(monkeypatch, "harness.features.clip.load_clip", "harness.features.clip.encode_image_folder")
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    test = _folder(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(ConfigError, match=r"--image-folder: the class folders of train .*train and test .*test differ: "
                                          r"only in train \['b'\], only in test \['c'\]"):
        _image_source(tmp_path, train, test).load()


def test_image_folder_holdout_too_large_is_refused_before_encoding(tmp_path, monkeypatch):
    _spy(monkeypatch, "harness.features.clip.load_clip", "harness.features.clip.encode_image_folder")
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    test = _folder(tmp_path / "test", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match=r"--holdout 50000: holdout count must be in \(0, 6\) for 6 training "
                                          r"points in image folder .*train"):
        _image_source(tmp_path, train, test, holdout=50_000).load()


def test_unreadable_images_are_printed_and_refused_above_a_small_share(tmp_path, tiny_arch, capsys):
    torch.manual_seed(0)
    per_class = {"a": 100, "b": 100}  # 1 unreadable of 201 in train: under the 1 % share, printed and skipped
    assert 1 / 201 <= embedding_source.MAX_UNREADABLE_SHARE < 3 / 7
    train = _folder(tmp_path / "train", per_class, corrupt={"b": 1})
    test = _folder(tmp_path / "test", {"a": 2, "b": 2})
    splits = _image_source(tmp_path, train, test, tiny_arch).load()
    assert splits.train_x.shape[0] + splits.val_x.shape[0] == 200 and splits.test_x.shape[0] == 4
    out = capsys.readouterr().out
    assert "--image-folder train" in out and "skipped 1 of 201 image files (unreadable): b/broken0.png" in out
    bad_test = _folder(tmp_path / "bad_test", {"a": 2, "b": 2}, corrupt={"a": 2, "b": 1})  # 3 of 7: refused
    with pytest.raises(ConfigError, match=r"--image-folder test .*bad_test: 3 of 7 image files \(43%\) could not be "
                                          r"read \(a/broken0\.png, a/broken1\.png, b/broken0\.png\); more than 1%"):
        _image_source(tmp_path, train, bad_test, tiny_arch).load()
