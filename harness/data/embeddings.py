"""Precomputed embeddings as datasets: files (.npy + labels, or .parquet) and MNIST pixels as stand-in.

File formats:
  .npy      (n, d) float array; labels in `labels=` (.npy, (n,) ints) or beside it as `<stem>.labels.npy`.
  .parquet  an embedding column (list / array of d floats per row) and an integer label column.
Every loader returns float32 (n, d) and int64 (n,) and fails with a ConfigError naming the file when it is
no .npy / Parquet file, holds no rows, holds no real numbers (strings, objects, complex values: the dtype is
named), holds NaN or inf rows (their indices and count are named), or when rows, dimensions or columns
disagree. `embedding_splits` holds out a class-balanced validation set from train (ImageNet: 50,000
images; the official validation set is the test set), refusing test labels of classes train lacks (naming the
test file and the classes) and a hold-out count that cannot work (naming --holdout).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.data.feature_splits import FeatureSplits, describe_rows, nonfinite_rows
from harness.data.holdout import class_balanced_holdout, holdout_quotas
from harness.errors import ConfigError

IMAGENET_HOLDOUT = 50_000  # §E.6: class-balanced validation images held out of train


def labels_path_for(path: Path) -> Path:
    """The default labels file beside an embeddings .npy: `<stem>.labels.npy`."""
    return path.with_name(path.stem + ".labels.npy")


def _read_npy(path: Path, what: str) -> np.ndarray:
    """A .npy file memory-mapped, after its header says it holds real numbers (no pickled objects are loaded)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            major, _ = fmt.read_magic(f)
            shape, _, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
    except (ValueError, EOFError, OSError) as e:
        raise ConfigError(f"{path}: not a readable .npy file ({e})") from None
    if dtype.kind not in "fiu":  # complex would lose its imaginary part; strings, objects, records are no numbers
        raise ConfigError(f"{path}: {what} must be real numbers (a float or integer dtype), got dtype {dtype}"
                          + (" (complex: the imaginary part would be dropped)" if dtype.kind == "c" else ""))
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:  # the header promises more bytes than the file holds
        raise ConfigError(f"{path}: cannot read its {shape} {dtype} array, truncated? ({e})") from None


def _check_pair(path: Path, x: np.ndarray, y: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The checked pair: embeddings (n, d) float32 with finite rows, labels (n,) int64 >= 0."""
    if x.ndim != 2:
        raise ConfigError(f"{path}: embeddings must be 2-D (n, d), got shape {x.shape}")
    if y.ndim != 1:
        raise ConfigError(f"{path}: labels must be 1-D (n,), got shape {y.shape}")
    if x.shape[0] == 0:
        raise ConfigError(f"{path}: holds no rows (shape {x.shape}, dtype {x.dtype})")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"{path}: {x.shape[0]} embedding rows but {y.shape[0]} labels")
    if x.shape[1] == 0:
        raise ConfigError(f"{path}: embeddings have dimension 0")
    if dim is not None and x.shape[1] != dim:
        raise ConfigError(f"{path}: embeddings have dimension {x.shape[1]}, expected {dim}")
    if y.dtype.kind not in "iuf":
        raise ConfigError(f"{path}: labels must be integers, got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ConfigError(f"{path}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise ConfigError(f"{path}: labels must be >= 0, found {y.min()}")
    x = np.asarray(x, dtype=np.float32)
    bad = nonfinite_rows(x)
    if bad.size:
        raise ConfigError(f"{path}: {describe_rows(bad)} of {x.shape[0]} hold NaN or inf (or values beyond float32's "
                          "range); fix or drop them: a head would train on NaN")
    return x, y.astype(np.int64)


def _read_parquet(path: Path, column: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    import polars as pl

    names = pl.read_parquet_schema(path)
    missing = [c for c in (column, label_column) if c not in names]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; columns are {list(names)}")
    df = pl.read_parquet(path, columns=[column, label_column])
    if df[label_column].null_count() or df[column].null_count():
        raise ConfigError(f"{path}: null values in {column!r} or {label_column!r}")
    emb = df[column]
    inner = getattr(emb.dtype, "inner", None)
    if inner is not None and not (inner.is_float() or inner.is_integer()):
        raise ConfigError(f"{path}: column {column!r} must hold real numbers per row, got {emb.dtype}")
    if isinstance(emb.dtype, pl.Array):  # fixed width: one dimension by construction
        x = emb.to_numpy()
    elif isinstance(emb.dtype, pl.List):
        lengths = emb.list.len().unique().sort()
        if lengths.len() != 1:
            raise ConfigError(f"{path}: rows of {column!r} have different dimensions {lengths.to_list()[:5]}")
        x = emb.explode().to_numpy().reshape(df.height, int(lengths[0]))
    else:
        raise ConfigError(f"{path}: column {column!r} must hold a list of floats per row, got {emb.dtype}")
    return np.asarray(x, dtype=np.float32), df[label_column].to_numpy()


def load_embedding_file(
    path: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    column: str = "embedding",
    label_column: str = "label",
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, d) float32 and labels (n,) int64 from a .npy (+ labels) or .parquet file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    if path.suffix == ".npy":
        lpath = Path(labels) if labels is not None else labels_path_for(path)
        if not lpath.exists():
            raise FileNotFoundError(f"{path}: labels file {lpath} not found (pass labels=...)")
        x, y = _read_npy(path, "embeddings"), _read_npy(lpath, "labels")
    elif path.suffix == ".parquet":
        if labels is not None:
            raise ConfigError(f"{path}: a .parquet file carries its labels in column {label_column!r}; drop labels=")
        x, y = _read_parquet(path, column, label_column)
    else:
        raise ConfigError(f"{path}: unsupported embedding file type {path.suffix!r} (use .npy or .parquet)")
    return _check_pair(path, x, y, dim)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero). (n, d) -> (n, d) float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def check_test_classes(train_y: np.ndarray, test_y: np.ndarray, train_name: str = "train",
                       test_name: str = "test") -> None:
    """Refuse test labels of classes the training set does not have (ConfigError naming the test data and the
    classes): the head would get outputs it never trained and those points would always count as errors."""
    missing = np.setdiff1d(np.unique(test_y), np.unique(train_y))
    if missing.size:
        count = int(np.isin(test_y, missing).sum())
        shown = missing[:10].tolist()
        more = f" and {missing.size - 10} more" if missing.size > 10 else ""
        raise ConfigError(f"{test_name}: test labels hold classes {shown}{more} ({count} of {test_y.size} points) that "
                          f"the training set {train_name} does not have: no head can predict them, every such point "
                          "would count as an error")


def embedding_splits(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    holdout: int = IMAGENET_HOLDOUT, seed: int = 0, train_name: str = "train", test_name: str = "test",
) -> FeatureSplits:
    """Train minus a class-balanced hold-out of `holdout` points (-> val), and the test set. Raises ConfigError
    for test classes missing from train and for a hold-out that cannot work (naming --holdout); `train_name` /
    `test_name` (a file or folder) name the data in those messages."""
    if train_x.shape[1] != test_x.shape[1]:
        raise ConfigError(f"train embeddings have dimension {train_x.shape[1]} but test embeddings {test_x.shape[1]}")
    check_test_classes(train_y, test_y, train_name, test_name)
    keep, held = class_balanced_holdout(train_y, holdout, seed, where=train_name)
    return FeatureSplits(np.asarray(train_x[keep], np.float32), train_y[keep], np.asarray(train_x[held], np.float32),
                         train_y[held], np.asarray(test_x, np.float32), np.asarray(test_y, np.int64))


def load_embedding_splits(
    train: str | os.PathLike, test: str | os.PathLike, train_labels: str | os.PathLike | None = None,
    test_labels: str | os.PathLike | None = None, holdout: int = IMAGENET_HOLDOUT, seed: int = 0,
    column: str = "embedding", label_column: str = "label",
) -> FeatureSplits:
    """Two embedding files (train; test = the official validation set) -> FeatureSplits with hold-out. The
    hold-out count is checked against train's classes before the test file is read."""
    tx, ty = load_embedding_file(train, train_labels, column, label_column)
    holdout_quotas(*np.unique(ty, return_counts=True), holdout, np.random.default_rng(seed), where=str(train))
    sx, sy = load_embedding_file(test, test_labels, column, label_column, dim=tx.shape[1])
    return embedding_splits(tx, ty, sx, sy, holdout, seed, train_name=str(train), test_name=str(test))


def mnist_pixel_embeddings(data_dir: str | None = None) -> FeatureSplits:
    """MNIST images as L2-normalised 784-d "embeddings" (the stand-in when no CLIP/ImageNet is at hand);
    MNIST's own 10k validation split is the hold-out."""
    from harness.data.mnist import load_mnist

    im = load_mnist(data_dir)

    def flat(x: np.ndarray) -> np.ndarray:
        return l2_normalise(x.reshape(x.shape[0], -1).astype(np.float32) / 255.0)

    return FeatureSplits(flat(im.train_x), im.train_y, flat(im.val_x), im.val_y, flat(im.test_x), im.test_y)

