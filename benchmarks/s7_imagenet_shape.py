"""S7 (Table 2's ImageNet row) end to end at ImageNet's shape, timed: synthetic CLIP-like embeddings of the
real sizes written as embedding files, then `studies/local_vs_global.py --embeddings` on them through Ray.

    python benchmarks/s7_imagenet_shape.py -- --paper --device cuda --retriever torch     # one GPU
    python benchmarks/s7_imagenet_shape.py --train 20000 --test 2000 --classes 100 -- --epochs 2 --test-points 500

The embeddings are class-clustered unit vectors (a class mean plus noise, L2-normalised, like CLIP's): 1.28M
x 512 training and 50k test by default, 1000 classes; the study holds out 50k of train as validation
(§E.6). Values are synthetic, so accuracies say nothing about ImageNet: this measures time. Everything
after `--` goes to the study. Prints the data generation time, Ray start, the study's wall time and its
per-trial phases.

Run again with the same `--folder` and the study's same `--out-dir`, it reuses the embedding files (when this
script wrote them with the same arguments and they are unchanged) and the trained head (the study's feature
cache, once written; the global training's last finished epoch, if it was cut off during training): a second
run does what is left (on a GPU machine that is still warm, a second device call), and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import polars as pl

from benchmarks.timing import timed_study, trial_phases
from harness.results.atomic import atomic_path
from harness.results.run_record import read_run
from studies import local_vs_global


def write_embeddings(folder: Path, train: int, test: int, classes: int, dim: int, noise: float,
                     seed: int = 0) -> tuple[Path, Path]:
    """`train.npy` / `test.npy` (float32, unit rows) with `<stem>.labels.npy` beside them, written in blocks.
    `made.json` (written last, atomically) records the arguments, this function's source and the files' sizes
    and modification times."""
    (folder / "made.json").unlink(missing_ok=True)  # a write cut off half way is never taken as made
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)).astype(np.float32)
    for name, n in (("train", train), ("test", test)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        x = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        for s in range(0, n, 65536):
            block = means[labels[s : s + 65536]] + noise * rng.standard_normal((min(65536, n - s), dim),
                                                                                 dtype=np.float32)
            x[s : s + 65536] = block / np.linalg.norm(block, axis=1, keepdims=True)
        x.flush()
        del x
        np.save(folder / f"{name}.labels.npy", labels.astype(np.int64))
    with atomic_path(folder / "made.json") as tmp:
        tmp.write_text(json.dumps(_made(folder, train=train, test=test, classes=classes, dim=dim, noise=noise,
                                        seed=seed)))
    return folder / "train.npy", folder / "test.npy"


def _made(folder: Path, **args: object) -> dict[str, object]:
    """What `made.json` holds for files written into `folder` with `args` by this code, as they are now."""
    files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] if f.exists() else None
             for f in (folder / n for n in ("train.npy", "train.labels.npy", "test.npy", "test.labels.npy"))}
    return {"args": args, "code": hashlib.sha256(inspect.getsource(write_embeddings).encode()).hexdigest(),
            "files": files}


def embeddings_in(folder: Path, train: int, test: int, classes: int, dim: int, noise: float,
                  seed: int = 0) -> tuple[Path, Path, bool]:
    """(train.npy, test.npy, whether they were already there): the files of `folder` when write_embeddings made
    them with these arguments and this code and they have not changed since (a second call on a GPU machine
    that is still warm reuses them); otherwise written now."""
    made, args = folder / "made.json", {"train": train, "test": test, "classes": classes, "dim": dim,
                                        "noise": noise, "seed": seed}
    try:
        same = made.exists() and json.loads(made.read_text()) == _made(folder, **args)
    except json.JSONDecodeError:  # not a record this script wrote
        same = False
    if same:
        return folder / "train.npy", folder / "test.npy", True
    return (*write_embeddings(folder, train, test, classes, dim, noise, seed), False)


def main() -> None:
    argv = sys.argv[1:]
    study_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=1_281_167, help="training embeddings (ImageNet: 1,281,167)")
    p.add_argument("--test", type=int, default=50_000, help="test embeddings (ImageNet's validation set)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--noise", type=float, default=1.5, help="noise std around the class means (before normalising)")
    p.add_argument("--folder", default=None, help="where to write the files (default: a temporary folder); files "
                   "this script wrote there with the same arguments are reused")
    args = p.parse_args(own)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="s7_imagenet_shape_"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test, reused = embeddings_in(folder, args.train, args.test, args.classes, args.dim, args.noise)
    generate = time.perf_counter() - start
    made = "reused (written by an earlier run)" if reused else f"written in {generate:.1f} s"
    print(f"{args.train} x {args.dim} training / {args.test} test embeddings {made} in {folder}",
          flush=True)  # now, so that a run cut off inside the study still says this much
    holdout = min(50_000, args.train // 10)
    study_args = ["--embeddings", str(train), str(test), "--holdout", str(holdout), *study_args]
    out_dir = local_vs_global.parse(study_args).out_dir
    resumed = sorted(Path(out_dir, "features").glob("*.train.pt"))  # a training a cut-off run left part way
    cfg, ray_start, wall = timed_study(local_vs_global, study_args)
    points = pl.read_parquet(Path(cfg.out_dir) / "points.parquet")
    n = points.filter((pl.col("method") == "ttt") & (pl.col("metric") == "accuracy")).height
    trials, phases = trial_phases(points, "accuracy")
    record = read_run(cfg.out_dir)
    assert record is not None  # the study has just written it
    sweep = record["sweeps"]["local_vs_global"]
    print(f"\n{args.train} x {args.dim} training / {args.test} test embeddings, {args.classes} classes "
          f"(synthetic; hold-out {holdout}): {made}")
    print(f"Ray start {ray_start:.1f} s; study wall time {wall:.1f} s for {n} test points")
    trial_sum = float(trials["wall_time_s"].sum())
    if sweep["reused"]:
        print(f"  the rows of {sweep['reused']} of {sweep['trials']} trial(s) were reused (an earlier run's, same "
              "config, inputs and code): their work was not redone, and the trial times below are that run's")
    else:
        what = ("training and retrieval included" if "train" in phases else
                "retrieval included; the head and its features came from the study's cache")
        print(f"  {n / wall:.1f} points/s end to end ({what})")
        print(f"  the study outside its trials (loading, Ray's object store, tables): {wall - trial_sum:.1f} s")
    print(f"trial wall time {trial_sum:.1f} s on {', '.join(sorted(set(trials['device'].to_list())))}")
    if resumed and "train" in phases:
        print(f"  the training resumed from a cut-off run's checkpoint ({resumed[0].name}): train below is the "
              "epochs left, not the whole training")
    order = ["train", "features", "index", "retrieval", "to_device", "ttt", "global_heads"]  # the trial's order
    for name, s in sorted(phases.items(), key=lambda p: order.index(p[0]) if p[0] in order else len(order)):
        print(f"  {name:<13} {s:8.1f} s ({100 * s / trial_sum:5.1f} %)"
              + (f"  {n / s:,.1f} points/s" if name == "ttt" and s > 0 else ""))
    print(f"  {'other':<13} {trial_sum - sum(phases.values()):8.1f} s (loading cached features, writing the cache, "
          "building rows)")


if __name__ == "__main__":
    main()
