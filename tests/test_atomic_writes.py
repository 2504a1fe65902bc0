"""Atomic writes: a writer SIGKILLed before its rename leaves a temp that the next write of the same target removes;
the temp of a writer still running is left alone, and that writer still lands its file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.results.atomic import atomic_path, orphaned_temps, temp_dir_beside

# a writer that starts an atomic write of argv[1], writes part of it, says where, and waits for a line on stdin
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from harness.results.atomic import atomic_path, temp_dir_beside

    target, kind = Path(sys.argv[1]), sys.argv[2]
    if kind == "dir":
        tmp = temp_dir_beside(target)
        (tmp / "part.npy").write_bytes(b"x" * 1000)
        print(tmp, flush=True)
        sys.stdin.readline()
    else:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            print(tmp, flush=True)
            sys.stdin.readline()
            tmp.write_bytes(b"from the live writer")
""")


def start_writer(target: Path, kind: str = "file") -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == target.parent, tmp
    return proc, tmp


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_the_next_write_removes_a_killed_writers_temp_and_only_that(tmp_path):
    target = tmp_path / "features.npz"
    live, live_tmp = start_writer(target)
    killed, killed_tmp = start_writer(target)
    kill(killed)
    other_target_killed, other_tmp = start_writer(tmp_path / "other.npz")
    kill(other_target_killed)
    assert orphaned_temps(target) == [killed_tmp]

    with atomic_path(target) as tmp:
        tmp.write_bytes(b"from this writer")
    assert target.read_bytes() == b"from this writer"
    assert not killed_tmp.exists()  # the killed writer's half file is gone
    assert live_tmp.exists()  # the running writer's is not
    assert other_tmp.exists()  # nor a temp of another target (its own next write removes it)

    live.communicate("go\n", timeout=30)
    assert live.returncode == 0
    assert target.read_bytes() == b"from the live writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["features.npz", other_tmp.name])


def test_a_killed_writers_temp_folder_is_removed_by_the_next_one(tmp_path):
    target = tmp_path / "clip-ViT-B-32-abc"
    killed, killed_tmp = start_writer(target, "dir")
    kill(killed)
    assert orphaned_temps(target, ".tmpdir") == [killed_tmp]
    mine = temp_dir_beside(target)
    assert mine.is_dir() and not any(mine.iterdir())
    assert not killed_tmp.exists()


def test_a_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
