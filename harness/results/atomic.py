"""Atomic file writes: write to a temp file in the target's folder, then rename over the target.

A writer killed before its rename (SIGKILL, a node lost) leaves its temp file behind, and at the ImageNet shape
one is gigabytes. Temp names therefore carry their writer (`.<name>.<host>_<boot id>_<pid namespace>-<pid>.<random>
<suffix>`), and the next atomic write of the same target removes the temps of writers that are gone: same host and
boot (kernel), same pid namespace, pid not running. A temp of another machine, or of a writer still running, is
never touched.
`temp_dir_beside` does the same for a folder built in place of another (an embeddings cache, a saved index).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


@functools.cache
def _machine() -> str:
    """This kernel and pid namespace: `<host>-<boot id>-<pid namespace>`. The boot id tells apart hosts that share
    a hostname (cloned VMs on one shared file system), the namespace containers on one kernel, whose pids are
    their own."""
    parts = [socket.gethostname().replace("/", "_").replace("-", "_")]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # no /proc (macOS): the hostname alone
        pass
    return "_".join(parts)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _prefix(path: Path) -> str:
    return f".{path.name}.{_machine()}-"


def orphaned_temps(path: str | os.PathLike, suffix: str = ".tmp") -> list[Path]:
    """The temps (files or folders) that writers of `path` with this `suffix`, on this machine, left behind when
    killed: their writer is no longer running."""
    path = Path(path)
    prefix = _prefix(path)
    orphans = []
    for temp in path.parent.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = temp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            orphans.append(temp)
    return orphans


def _sweep(path: Path, suffix: str) -> None:
    for orphan in orphaned_temps(path, suffix):
        if orphan.is_dir():
            shutil.rmtree(orphan, ignore_errors=True)
        else:
            orphan.unlink(missing_ok=True)


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new empty folder beside `path`, to be renamed onto it once complete; the caller removes it on failure.
    Folders that killed writers of `path` left are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path, ".tmpdir")
    return Path(tempfile.mkdtemp(prefix=f"{_prefix(path)}{os.getpid()}.", suffix=".tmpdir", dir=path.parent))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` (mode per umask), on error it is removed.

    A reader, or a writer killed midway, never sees a half-written file, and an old file survives a failed write.
    The temps earlier writers of `path` left when killed are removed first (see the module's docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f"{_prefix(path)}{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
