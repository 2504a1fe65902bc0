"""Datasets and their loaders. Look one up by name: `DATASETS.get("mnist")(...)`."""

from harness.data.mnist import DATASETS, ImageSplits, load_mnist
from harness.data.subsample import class_balanced_subsample

__all__ = ["DATASETS", "ImageSplits", "class_balanced_subsample", "load_mnist"]
