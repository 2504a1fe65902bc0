"""open_clip image embeddings of an ImageFolder-layout dataset (ImageNet train/ and val/), cached on disk.

    root/<class name>/<image file>   ->   x (n, d) float32, unit L2 norm;  y (n,) int64 (sorted class names)

Images go through the model's own eval preprocessing (resize, centre crop, normalise), in batches, on
the GPU when there is one. A file PIL cannot read is skipped and counted (`FolderEmbeddings.skipped`; the
studies' EmbeddingSource prints them and refuses a folder with too many); a folder with no class folders or no
readable image fails with an error naming it. Splitting train into train and hold-out, and checking that the two
folders hold the same classes, is EmbeddingSource's (harness/features/embedding_source.py). Each folder's
embeddings are cached once as memory-mapped .npy files under `<cache_dir>/<key>/`, written to a temp folder and
renamed, so an interrupted run leaves nothing half-written. The key holds the folder, a fingerprint of its files
(harness.results.provenance: by listing for a folder of many files), the model, its pretrained tag (and the
fingerprint of the weights file when it is one), open_clip's version and the version of this module (the code that
encodes; an edit elsewhere in the harness keeps hours of ImageNet embeddings): an image added, removed or replaced,
other weights or other encoding code give new embeddings, never the old ones. The
device is not in the key: GPU and CPU encodings differ in the last bits only, and nothing downstream amplifies
that the way training does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from harness.devices import trial_device
from harness.results.atomic import temp_dir_beside
from harness.results.provenance import code_version, input_fingerprint
from harness.results.schema import config_hash


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Which open_clip model encodes the images (paper: ViT-B/32, OpenAI weights) and how."""

    arch: str = "ViT-B-32"
    pretrained: str | None = "openai"  # any open_clip pretrained tag; None: random weights (tests)
    batch_size: int = 256
    num_workers: int = 4  # DataLoader worker processes decoding images
    device: str | None = None  # None: cuda when present

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"ClipConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"ClipConfig.num_workers must be >= 0, got {self.num_workers}")


@dataclasses.dataclass(frozen=True)
class FolderEmbeddings:
    features: np.ndarray  # (n, d) float32, unit norm
    labels: np.ndarray  # (n,) int64 indices into classes
    classes: tuple[str, ...]
    skipped: tuple[str, ...]  # files that could not be read


def _open_clip_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:  # tests pass their own model and preprocessing
        return None


def load_clip(cfg: ClipConfig) -> tuple[torch.nn.Module, Callable]:
    """(model in eval mode, its eval preprocessing transform) from open_clip."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(cfg.arch, pretrained=cfg.pretrained)
    return model.eval(), preprocess


class _TolerantImageFolder:
    """torchvision ImageFolder whose items are (image tensor or None, label, index): unreadable -> None."""

    def __init__(self, root: Path, transform: Callable) -> None:
        from torchvision.datasets import ImageFolder

        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
        try:
            self.folder = ImageFolder(str(root), transform=transform)
        except FileNotFoundError as e:  # no class folders, or class folders without image files
            raise ValueError(f"image folder {root} holds no images in <class>/<file> layout ({e})") from None

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        try:
            image, label = self.folder[i]
        except (OSError, ValueError, SyntaxError):  # PIL: unidentified, truncated or corrupt files
            return None, self.folder.targets[i], i
        return image, label, i


def _collate(batch):
    ok = [b for b in batch if b[0] is not None]
    bad = [b[2] for b in batch if b[0] is None]
    images = torch.stack([b[0] for b in ok]) if ok else None
    return images, torch.tensor([b[1] for b in ok], dtype=torch.int64), bad


@torch.no_grad()
def encode_image_folder(root: str | os.PathLike, model: torch.nn.Module, preprocess: Callable,
                        cfg: ClipConfig = ClipConfig()) -> FolderEmbeddings:
    """Embeddings of every readable image under root (ImageFolder layout), in folder order."""
    root = Path(root)
    data = _TolerantImageFolder(root, preprocess)
    device = trial_device(cfg.device)
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                         collate_fn=_collate, pin_memory=device.type == "cuda")
    feats, labels, skipped = [], [], []
    for images, y, bad in loader:
        skipped += [data.folder.samples[i][0] for i in bad]
        if images is None:
            continue
        z = model.encode_image(images.to(device, non_blocking=True))  # (b, d)
        feats.append(torch.nn.functional.normalize(z.float(), dim=-1).cpu().numpy())
        labels.append(y.numpy())
    if not feats:
        raise ValueError(f"image folder {root}: none of its {len(data)} image files could be read")
    return FolderEmbeddings(np.concatenate(feats), np.concatenate(labels), tuple(data.folder.classes), tuple(skipped))


def cached_folder_embeddings(root: str | os.PathLike, cfg: ClipConfig = ClipConfig(),
                             cache_dir: str | os.PathLike | None = None,
                             model: torch.nn.Module | None = None,
                             preprocess: Callable | None = None) -> FolderEmbeddings:
    """`encode_image_folder`, cached as `<cache_dir>/<key>/{features,labels}.npy` (+ meta.json) and
    memory-mapped on later calls. `model` / `preprocess` override cfg's open_clip model (tests); pass a
    distinct cfg.arch for them so their cache key differs."""
    root = Path(root).resolve()
    if cache_dir is None:
        m, p = (model, preprocess) if model is not None else load_clip(cfg)
        return encode_image_folder(root, m, p, cfg)
    identity = {"root": str(root), "arch": cfg.arch, "pretrained": cfg.pretrained}
    key_fields = {**identity, "images": input_fingerprint([root]), "open_clip": _open_clip_version(),
                  "code_version": code_version("features/clip.py")}  # the code that encodes, alone
    if cfg.pretrained is not None and Path(cfg.pretrained).expanduser().is_file():  # weights from a local file
        key_fields["weights"] = input_fingerprint([cfg.pretrained])
    key = f"clip-{cfg.arch}-{Path(cfg.pretrained or 'random').name}-{config_hash(key_fields)}"
    final = Path(cache_dir) / key
    if not (final / "meta.json").exists():
        m, p = (model, preprocess) if model is not None else load_clip(cfg)
        out = encode_image_folder(root, m, p, cfg)
        tmp = temp_dir_beside(final)
        try:
            np.save(tmp / "features.npy", out.features)
            np.save(tmp / "labels.npy", out.labels)
            (tmp / "meta.json").write_text(json.dumps({**identity, "classes": out.classes, "skipped": out.skipped}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((final / "meta.json").read_text())
    return FolderEmbeddings(np.load(final / "features.npy", mmap_mode="r"), np.load(final / "labels.npy"),
                            tuple(meta["classes"]), tuple(meta["skipped"]))
