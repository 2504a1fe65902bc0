"""benchmarks/s7_imagenet_shape.py (issue 16 item 4): the embedding files are reused only when this script wrote
them with the same arguments, and a run cut off part way is finished by the same command (files and trained
head reused), the second run saying so and giving the same rows."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.s7_imagenet_shape import embeddings_in  # noqa: E402


def test_embedding_files_are_reused_only_when_made_with_the_same_arguments(tmp_path):
    train, test, reused = embeddings_in(tmp_path, 300, 40, 5, 8, 1.5)
    assert not reused
    x, y = np.load(train), np.load(tmp_path / "train.labels.npy")
    assert x.shape == (300, 8) and x.dtype == np.float32 and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
    assert sorted(np.bincount(y)) == [60] * 5 and np.load(test).shape == (40, 8)
    stamp = train.stat().st_mtime_ns
    assert embeddings_in(tmp_path, 300, 40, 5, 8, 1.5)[2] and train.stat().st_mtime_ns == stamp  # untouched

    _, _, reused = embeddings_in(tmp_path, 300, 40, 5, 8, 0.5)  # other noise: written again
    assert not reused and not np.array_equal(np.load(train), x)
    (tmp_path / "made.json").unlink()  # as a write cut off before its end leaves the folder
    assert not embeddings_in(tmp_path, 300, 40, 5, 8, 0.5)[2]
    np.save(tmp_path / "test.npy", np.zeros((40, 8), np.float32))  # a file replaced since: written again
    assert not embeddings_in(tmp_path, 300, 40, 5, 8, 0.5)[2] and np.load(test).any()
    (tmp_path / "made.json").write_text('{"args": ')  # not a record this script wrote
    assert not embeddings_in(tmp_path, 300, 40, 5, 8, 0.5)[2]
    assert embeddings_in(tmp_path, 300, 40, 5, 8, 0.5)[2]


def _bench(tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "s7_imagenet_shape.py"), "--train", "3000", "--test", "300",
         "--classes", "10", "--dim", "16", "--folder", str(tmp_path / "data"), "--",
         "--epochs", "2", "--test-points", "30", "--global-heads", "2", "--device", "cpu", "--address", "local",
         "--out-dir", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_runs_again_reuse_what_is_done_and_say_so(tmp_path):
    """Three runs of the benchmark, each on a new local Ray (about a minute on 2 cores): the first does
    everything; the second finds the trial's rows done; the third, after the rows are removed as a run cut off
    inside the trial leaves them, trains nothing (the head comes from the cache) and gives the same rows."""
    first = _bench(tmp_path)
    assert "written in" in first and "  train " in first and "  ttt " in first and "points/s" in first
    rows = pl.read_parquet(tmp_path / "out" / "points.parquet")
    assert rows.filter(pl.col("metric") == "accuracy").height == 60  # 30 points, global and TTT
    same = ["method", "metric", "point_id", "value"]

    second = _bench(tmp_path)
    assert "reused (written by an earlier run)" in second and "were reused" in second
    assert "points/s end to end" not in second  # nothing ran: no rate

    shutil.rmtree(tmp_path / "out" / "sweeps" / "local_vs_global" / "rows")
    third = _bench(tmp_path)
    assert "reused (written by an earlier run)" in third and "were reused" not in third
    assert "came from the study's cache" in third and "  train " not in third and "  ttt " in third
    again = pl.read_parquet(tmp_path / "out" / "points.parquet")
    assert again.select(same).sort(same).equals(rows.select(same).sort(same))
