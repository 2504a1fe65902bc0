"""Tune TTT hyperparameters (lr, Adam steps, k) per LeNet size on the MNIST validation split, as the
paper's Table 4 was found: one Optuna (TPE) search per size, trials run by Ray Tune, never on test.

Run (from the repository root):
    python studies/tune_ttt.py --smoke-test            # 1 size, 3 trials, 1 epoch, 100 val points (~1-2 min)
    python studies/tune_ttt.py --sizes 280 1268 --samples 30 --concurrent 2
    python studies/tune_ttt.py --resume                # finish a killed search (Optuna's state is restored)
    ray submit cluster.yaml studies/tune_ttt.py -- --sizes 280 600 1268 --samples 50 --concurrent 8
Output: <out-dir>/best.parquet (best lr / steps / k and validation error per size), the table printed,
run.json, every trial's rows under <out-dir>/sweeps/tune_ttt-<size>/rows/ and each size's Optuna study in
<out-dir>/sweeps/tune_ttt-<size>/optuna.db:
    optuna-dashboard sqlite:///results/tune_ttt/sweeps/tune_ttt-280/optuna.db   # pip install -e '.[optuna-dashboard]'

"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import polars as pl
from ray import tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.mnist import ImageSplits, load_mnist  # noqa: E402
from harness.data.subsample import class_balanced_subsample  # noqa: E402
from harness.distributed.runtime import cluster_summary, ray_session  # noqa: E402
from harness.distributed.sharding import ShardingConfig  # noqa: E402
from harness.distributed.study import RayOptions, check_cluster, prepare_sweep, record_sweep  # noqa: E402
from harness.distributed.sweep import search_trials  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.results.run_record import finished_record, read_run, write_run  # noqa: E402
from harness.results.schema import write_parquet_atomic  # noqa: E402
from harness.trials.mnist import MnistTrialConfig  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402

SEARCH_SPACE = {  # around Table 4's values (lr 1e-3..5e-2, 50-200 epochs, k 10-200)
    "ttt_lr": tune.loguniform(1e-4, 1e-1),
    "ttt_steps": tune.qrandint(10, 300, 10),
    "ttt_k": tune.choice([10, 20, 50, 100, 200, 400]),
}


@dataclasses.dataclass(frozen=True)
class TuneTTT:
    """The search's options (one Optuna search per LeNet size, on the validation split)."""

    sizes: tuple[int, ...] = (280, 1268, 4430)  # LeNet sizes, one search each
    samples: int = 20  # Optuna trials per size
    concurrent: int = 2  # trials at once (ConcurrencyLimiter)
    epochs: int | None = 3  # global training epochs (None: Table 3)
    val_points: int | None = 1000  # validation points, a seeded subset of the 10k (None: all)
    fraction: float = 1.0  # class-balanced fraction of the training set
    seed: int = 0  # global-training and searcher seed
    out_dir: str = "results/tune_ttt"  # best.parquet and the searches' storage
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.concurrent < 1:
            raise ConfigError(f"--concurrent must be >= 1, got {self.concurrent}")

    def fixed(self, size: int) -> dict:
        """The trial fields the search does not touch (trials of a size share one cached CNN)."""
        return {"model_size": size, "seed": self.seed, "epochs": self.epochs, "test_points": self.val_points,
                "fraction": self.fraction, "split": "val", **dataclasses.asdict(self.compute), "study": "tune_ttt",
                "cache_dir": str(Path(self.out_dir).resolve() / "features")}


PRESETS = {"smoke_test": TuneTTT(sizes=(280,), samples=3, concurrent=2, epochs=1, val_points=100, fraction=0.2,
                                 out_dir="results/tune_ttt_smoke")}


parse = study_parser(TuneTTT, PRESETS, __doc__)  # the options: a preset, then those given beside it


def search_bounds(space: dict) -> tuple[dict, dict]:
    """The lowest and the highest value the search may try of each field of `space` (Tune domains)."""
    low, high = {}, {}
    for name, domain in space.items():
        values = getattr(domain, "categories", None)  # tune.choice; the others have bounds
        low[name], high[name] = (min(values), max(values)) if values is not None else (domain.lower, domain.upper)
    return low, high


def check_search(cfg: TuneTTT, images: ImageSplits) -> None:
    """Before any work, what the other studies check (harness.distributed.study.run_study) for every trial the
    search may try: its fields in range, every neighbourhood inside the --fraction subsample (SEARCH_SPACE's
    largest ttt_k, Table 5's majority_k), --val-points inside the validation split, the --engine runnable here."""
    low, high = search_bounds(SEARCH_SPACE)
    n = class_balanced_subsample(images.train_y, cfg.fraction, seed=cfg.seed).size
    if high["ttt_k"] > n:
        raise ConfigError(f"--fraction {cfg.fraction} leaves {n} of the {images.train_y.size} training images, fewer "
                          f"than the search's largest neighbourhood (ttt_k {high['ttt_k']}, SEARCH_SPACE in "
                          "studies/tune_ttt.py): raise --fraction")
    for size in cfg.sizes:
        for point in (low, high):
            MnistTrialConfig(**cfg.fixed(size), **point).check_inputs(images=images)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    for size in cfg.sizes:  # validate every search's fixed fields before any work starts
        MnistTrialConfig(**cfg.fixed(size))
    images = load_mnist()
    check_search(cfg, images)
    sweeps = {size: prepare_sweep(cfg, name=f"tune_ttt-{size}", out_dir=cfg.out_dir, metric="ttt_error")
              for size in cfg.sizes}
    best, rows = [], []
    with ray_session(cfg.ray.address):
        check_cluster(cfg, cfg.ray)  # as run_study: a GPU for --device cuda, the actors' GPUs
        shared: dict[str, object] = {"images": images}
        if cfg.ray.actors:  # each searched trial shards its validation points over the actors it reserves
            shared["sharding"] = ShardingConfig(actors=cfg.ray.actors, gpus_per_actor=cfg.ray.gpus_per_actor)
        for size, sweep in sweeps.items():
            started = time.time()
            result = search_trials(MnistTrialConfig, SEARCH_SPACE, sweep, fixed=cfg.fixed(size),
                                   num_samples=cfg.samples, max_concurrent=cfg.concurrent, seed=cfg.seed,
                                   resume=cfg.ray.resume, reuse_stale=cfg.ray.reuse_stale, shared=shared,
                                   callbacks=cfg.ray.tune_callbacks(sweep.name))
            record_sweep(cfg, name=sweep.name, out_dir=cfg.out_dir, started=started, rows=result.rows,
                         trials=len(result.grid), reused=None, cluster=cluster_summary(), storage=sweep.experiment_path)
            rows.append(result.rows)
            top = result.grid.get_best_result()
            best.append({"model_size": size, "ttt_lr": top.config["ttt_lr"], "ttt_steps": top.config["ttt_steps"],
                         "ttt_k": top.config["ttt_k"], "val_ttt_error": top.metrics["ttt_error"],
                         "val_global_error": top.metrics["global_error"], "trials": len(result.grid)})
    table = pl.DataFrame(best)
    path = write_parquet_atomic(table, Path(cfg.out_dir) / "best.parquet")
    write_run(cfg.out_dir, finished_record(read_run(cfg.out_dir), pl.concat(rows, how="diagonal_relaxed"), None))
    with pl.Config(tbl_rows=-1, tbl_cols=-1):
        print(table)
    print(f"\nwrote {path}")
    return table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
