"""What made a result: the code version and a fingerprint of every input file.

A trial's cached rows (and a cached feature file) may be reused only when the config, the inputs and the
code that made them are the same. `code_version()` hashes the source of the `harness` package (any edit
of a component changes it); `input_fingerprint(paths)` hashes each input file's content where that is
cheap (files up to CONTENT_HASH_LIMIT bytes) and its size and modification time otherwise. A folder of more than
LISTING_LIMIT files (an ImageNet image folder: 1.28M files, ~140 GB) is one entry, a hash of its listing (each
file's relative path, size and modification time): reading every image to build a cache key would take longer
than the work, and adding, removing, replacing or editing a file still changes it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

HARNESS_ROOT = Path(__file__).resolve().parents[1]
CONTENT_HASH_LIMIT = 256 * 2**20  # bytes: larger files are fingerprinted by size and mtime only
LISTING_LIMIT = 1000  # files: a larger folder is fingerprinted by its listing, not its files' contents


@functools.cache
def code_version(*modules: str) -> str:
    """12-hex hash of every `harness/**/*.py` (paths and contents): the version of the code that computes.

    `modules` (paths below harness/, e.g. "features/clip.py"): of those files only, for a cache that costs hours
    to rebuild (CLIP embeddings of ImageNet, the Pile's index) and that they alone compute: an edit elsewhere in
    the harness then keeps it. A named file that does not exist is an error (a rename must not drop it)."""
    paths = sorted(HARNESS_ROOT.rglob("*.py")) if not modules else [HARNESS_ROOT / m for m in sorted(modules)]
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"code_version: {path} does not exist (a module renamed? update its caller)")
        digest.update(str(path.relative_to(HARNESS_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=4096)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    if size > CONTENT_HASH_LIMIT:
        return f"size={size},mtime_ns={mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return f"sha256={digest.hexdigest()[:16]}"


def _files_below(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _listing_fingerprint(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"files={len(files)},listing_sha256={digest.hexdigest()[:16]}"


def input_fingerprint(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{absolute file path: fingerprint} for every file named or below a named folder; a folder of more than
    LISTING_LIMIT files is one entry {folder path: hash of its listing}.

    A missing path fingerprints as "missing" (the trial itself then fails naming it)."""
    out: dict[str, str] = {}
    for given in paths:
        root = Path(given).expanduser().resolve()
        if not root.exists():
            out[str(root)] = "missing"
            continue
        files = _files_below(root)
        if len(files) > LISTING_LIMIT:
            out[str(root)] = _listing_fingerprint(root, files)
            continue
        for f in files:
            st = f.stat()
            out[str(f)] = _file_fingerprint(str(f), st.st_size, st.st_mtime_ns)
    return out


def changed_inputs(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The files whose fingerprints differ between two input_fingerprint results (added, removed or edited)."""
    return sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
