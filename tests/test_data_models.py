"""MNIST readers, subsampling, the LeNet family's exact parameter counts, synthetic LRH data."""

import gzip
import struct

import numpy as np
import pytest
import torch

from harness.data.mnist import MNIST_MEAN, MNIST_STD, load_mnist, read_idx, stratified_split
from harness.data.subsample import class_balanced_subsample
from harness.data.synthetic import LRHConfig, make_lrh
from harness.models.lenet import LENET_SPECS, LeNet, lenet_for_size
from harness.registry import Registry

FEATURE_DIMS = {280: 25, 600: 50, 1268: 80, 1976: 128, 2985: 176, 3246: 192, 4430: 240, 6386: 320, 11770: 512, 24294: 832,
                40818: 1152}


def test_lenet_parameter_counts_match_the_paper():
    assert sorted(LENET_SPECS) == sorted(FEATURE_DIMS)
    for params, spec in LENET_SPECS.items():
        model = LeNet(spec)
        assert sum(p.numel() for p in model.parameters()) == params
        assert spec.feature_dim == FEATURE_DIMS[params]
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert model.features(torch.zeros(3, 28, 28, dtype=torch.uint8)).shape == (3, FEATURE_DIMS[params])


def test_unknown_model_size_names_valid_sizes():
    with pytest.raises(ValueError, match=r"model_size 281 .* choose from \[280, 600"):
        lenet_for_size(281)


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    tr_x, te_x = rng.integers(0, 256, (10_010, 28, 28)), rng.integers(0, 256, (7, 28, 28))
    tr_y, te_y = rng.integers(0, 10, 10_010), rng.integers(0, 10, 7)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", tr_x, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", tr_y, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", te_x, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", te_y, gz)
    s = load_mnist(tmp_path)
    assert s.train_x.shape == (10, 28, 28) and s.val_x.shape == (10_000, 28, 28)
    train, val = stratified_split(tr_y, 10_000)  # the paper's split: stratified, fixed seed
    np.testing.assert_array_equal(s.train_x, tr_x[train])
    np.testing.assert_array_equal(s.val_y, tr_y[val])
    np.testing.assert_array_equal(s.test_x, te_x)
    np.testing.assert_array_equal(s.test_y, te_y)
    pixels = tr_x[train] / 255.0  # idx files from --data-dir: standardised with their training split's own stats
    assert (s.pixel_mean, s.pixel_std) == pytest.approx((pixels.mean(), pixels.std()), rel=1e-12)
    assert f"{pixels.mean():.4f}" in s.describe_standardisation() and "own" in s.describe_standardisation()


def test_idx_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_mnist(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + b"\x00" * 100)
    with pytest.raises(ValueError, match="bad: header says shape"):
        read_idx(bad)
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        read_idx(tmp_path / "junk")


def test_packaged_mnist_is_real(mnist):
    assert (mnist.train_x.shape, mnist.val_x.shape, mnist.test_x.shape) == ((50_000, 28, 28), (10_000, 28, 28), (10_000, 28, 28))
    assert mnist.train_x.dtype == np.uint8 and mnist.train_x.max() == 255
    # the official MNIST test set's class counts
    assert np.bincount(mnist.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_class_balanced_subsample():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    idx = class_balanced_subsample(labels, 0.1, seed=1)
    assert np.bincount(labels[idx]).tolist() == [25, 25, 25, 25]
    assert np.array_equal(idx, class_balanced_subsample(labels, 0.1, seed=1))
    assert not np.array_equal(idx, class_balanced_subsample(labels, 0.1, seed=2))
    assert np.array_equal(class_balanced_subsample(labels, 1.0), np.arange(1000))
    assert np.bincount(labels[class_balanced_subsample(labels, 0.5)]).tolist() == [100, 125, 125, 125]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction must be in"):
            class_balanced_subsample(labels, bad)


def test_lrh_instance_shapes_and_superposition():
    d = make_lrh(LRHConfig(d1=64, d2=8, s=1, n_train=640, n_test=20))
    assert d.train_psi.shape == (640, 8) and d.train_phi.shape == (640, 64)
    np.testing.assert_allclose(np.linalg.norm(d.projection, axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(d.train_psi, d.train_phi @ d.projection.T, rtol=1e-5, atol=1e-6)
    assert ((d.train_phi != 0).sum(1) == 1).all()
    np.testing.assert_allclose(d.train_y, 1.0)  # §C.3: y = 1 everywhere
    with pytest.raises(ValueError, match="LRHConfig.s = 9 must be <= d1 = 8"):
        LRHConfig(d1=8, s=9)


def test_registry_refuses_duplicates_and_suggests():
    reg = Registry("widget")
    reg.register("alpha")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(2)
    with pytest.raises(KeyError, match="did you mean 'alpha'"):
        reg.get("alpah")
