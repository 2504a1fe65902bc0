"""Tune TTT hyperparameters (lr, Adam steps, k) per LeNet size on the MNIST validation split, as the
paper's Table 4 was found: one Optuna (TPE) search per size, trials run by Ray Tune, never on test.

Run (from the repository root):
    python studies/tune_ttt.py --smoke-test            # 1 size, 3 trials, 1 epoch, 100 val points (~1-2 min)
    python studies/tune_ttt.py --sizes 280 1268 --samples 30 --concurrent 2
    python studies/tune_ttt.py --resume                # finish a killed search (Optuna's state is restored)
    ray submit cluster.yaml studies/tune_ttt.py -- --sizes 280 600 1268 --samples 50 --concurrent 8 --address auto
Output: <out-dir>/best.parquet (best lr / steps / k and validation error per size), the table printed,
every trial's rows under <out-dir>/sweeps/tune_ttt-<size>/rows/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import polars as pl
import ray
from ray import tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.runtime import init_ray  # noqa: E402
from harness.distributed.sweep import SweepConfig, optuna_search  # noqa: E402
from harness.distributed.trials import mnist_config_from_dict, mnist_sweep_trial  # noqa: E402
from harness.models.lenet import LENET_SPECS  # noqa: E402
from harness.results.schema import write_parquet_atomic  # noqa: E402
from harness.trials.mnist import add_engine_argument  # noqa: E402

SEARCH_SPACE = {  # around Table 4's values (lr 1e-3..5e-2, 50-200 epochs, k 10-200)
    "ttt_lr": tune.loguniform(1e-4, 1e-1),
    "ttt_steps": tune.qrandint(10, 300, 10),
    "ttt_k": tune.choice([10, 20, 50, 100, 200, 400]),
}


@dataclasses.dataclass(frozen=True)
class TuneTTTConfig:
    sizes: tuple[int, ...] = (280, 1268, 4430)
    samples: int = 20  # Optuna trials per size
    concurrent: int = 2  # trials at once (ConcurrencyLimiter)
    epochs: int | None = 3  # global training epochs (None: Table 3)
    val_points: int | None = 1000  # seeded subset of the 10k validation images
    fraction: float = 1.0
    seed: int = 0
    engine: str = "exact"  # head-TTT engine; "fused-fp16" etc. are the Triton GPU paths (HEAD_TTT_ENGINES)
    out_dir: str = "results/tune_ttt"
    resume: bool = False
    address: str | None = None

    def fixed(self, size: int) -> dict:
        return {"model_size": size, "seed": self.seed, "epochs": self.epochs, "test_points": self.val_points,
                "fraction": self.fraction, "split": "val", "engine": self.engine, "study": "tune_ttt",
                "cache_dir": str(Path(self.out_dir).resolve() / "features")}  # trials of a size share one CNN


SMOKE = TuneTTTConfig(sizes=(280,), samples=3, concurrent=2, epochs=1, val_points=100, fraction=0.2,
                      out_dir="results/tune_ttt_smoke")


def parse_args(argv: list[str] | None) -> TuneTTTConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke-test", action="store_true", help="a tiny search for CI")
    p.add_argument("--sizes", type=int, nargs="+", help=f"model sizes (of {sorted(LENET_SPECS)})")
    p.add_argument("--samples", type=int, help="Optuna trials per size")
    p.add_argument("--concurrent", type=int, help="trials at once")
    p.add_argument("--epochs", type=int)
    p.add_argument("--val-points", type=int)
    add_engine_argument(p)
    p.add_argument("--out-dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--address")
    a = p.parse_args(argv)
    base = SMOKE if a.smoke_test else TuneTTTConfig()
    overrides = {k: v for k, v in {
        "sizes": tuple(a.sizes) if a.sizes else None, "samples": a.samples, "concurrent": a.concurrent,
        "epochs": a.epochs, "val_points": a.val_points, "out_dir": a.out_dir, "resume": a.resume or None,
        "address": a.address, "engine": a.engine,
    }.items() if v is not None}
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    for size in cfg.sizes:  # validate every search before any work starts
        mnist_config_from_dict(cfg.fixed(size))
    connected_here = init_ray(cfg.address)
    try:
        images = load_mnist()
        best = []
        for size in cfg.sizes:
            result = optuna_search(
                mnist_sweep_trial, SEARCH_SPACE, SweepConfig(f"tune_ttt-{size}", str(Path(cfg.out_dir) / "sweeps")),
                fixed=cfg.fixed(size), num_samples=cfg.samples, max_concurrent=cfg.concurrent, seed=cfg.seed,
                resume=cfg.resume, shared={"images": images},
            )
            top = result.grid.get_best_result()
            best.append({"model_size": size, "ttt_lr": top.config["ttt_lr"], "ttt_steps": top.config["ttt_steps"],
                         "ttt_k": top.config["ttt_k"], "val_ttt_error": top.metrics["ttt_error"],
                         "val_global_error": top.metrics["global_error"], "trials": len(result.grid)})
    finally:
        if connected_here:
            ray.shutdown()
    table = pl.DataFrame(best)
    path = write_parquet_atomic(table, Path(cfg.out_dir) / "best.parquet")
    with pl.Config(tbl_rows=-1, tbl_cols=-1):
        print(table)
    print(f"\nwrote {path}")
    return table


if __name__ == "__main__":
    main()
