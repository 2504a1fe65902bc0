"""S11 — theory check (paper §5, §C.3): on synthetic data under the linear representation hypothesis,
the global least-squares model's error approaches 1 - d2/d1 while TTT's error stays at σ² s log(d1/s)/k.

Run:
    python studies/theory_check.py                 # default grid, about a minute on a 2-core CPU (Ray start,
                                                   # one Tune trial per cell)
    python studies/theory_check.py --d1 256 1024 4096 --d2 8 16 32 64 128 --k 10 40 --noise 0.1
    python studies/theory_check.py --resume        # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/theory_check.py -- --d1 256 1024 4096 --address auto
Every (d1, d2, s, k) cell is one Ray Tune trial; a local Ray starts when no cluster is given.
Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs d2/d1 with the prediction); each
trial's rows under <out-dir>/sweeps/theory_check/rows/ (or under --storage-path).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.synthetic import LRHConfig  # noqa: E402
from harness.distributed.study_sweep import SweepOptions, add_sweep_args, sweep_options_from_args, run_trials  # noqa: E402
from harness.report import finish_study  # noqa: E402
from harness.trials.lrh import TheoryTrialConfig, global_error_prediction, lrh_trial, ttt_rate  # noqa: E402


@dataclasses.dataclass(frozen=True)
class TheoryCheckConfig:
    d1: tuple[int, ...] = (128, 512)  # number of concepts
    d2: tuple[int, ...] = (8, 16, 32, 64)  # feature dimension
    s: tuple[int, ...] = (1, 4)  # sparsity (s > 1: random positive concept weights)
    k: tuple[int, ...] = (20,)  # neighbours
    noise: float = 0.1  # σ; the global column also shows the noiseless §C.3 prediction
    points_per_cluster: int = 60  # training points per neighbourhood (must exceed k)
    n_test: int = 400
    seed: int = 0
    out_dir: str = "results/theory_check"
    sweep: SweepOptions = SweepOptions()  # Ray address, Tune storage, resume

    def trials(self) -> list[TheoryTrialConfig]:
        out = []
        for d1, d2, s, k in itertools.product(self.d1, self.d2, self.s, self.k):
            clusters = d1 // s
            out.append(TheoryTrialConfig(LRHConfig(
                d1=d1, d2=d2, s=s, n_train=clusters * self.points_per_cluster, n_test=self.n_test, noise=self.noise,
                coefficient_jitter=0.0 if s == 1 else 0.5, seed=self.seed), k=k))
        return out


def parse_args(argv: list[str] | None) -> TheoryCheckConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("d1", "d2", "s", "k"):
        p.add_argument(f"--{name}", type=int, nargs="+")
    p.add_argument("--noise", type=float)
    p.add_argument("--points-per-cluster", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out-dir")
    add_sweep_args(p)
    args = p.parse_args(argv)
    sweep = sweep_options_from_args(args)
    a = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TheoryCheckConfig)}}
    over = {k: (tuple(v) if isinstance(v, list) else v) for k, v in a.items() if v is not None} | {"sweep": sweep}
    return dataclasses.replace(TheoryCheckConfig(), **over)


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse_args(argv)
    trials = cfg.trials()
    rows = run_trials(trials, lrh_trial, cfg.sweep.sweep("theory_check", cfg.out_dir), resume=cfg.sweep.resume,
                      address=cfg.sweep.address,
                      name=lambda t: f"d1-{t.data.d1}-d2-{t.data.d2}-s-{t.data.s}-k-{t.k}")
    outputs = finish_study(rows, cfg.out_dir, by=["dataset", "model_size", "k", "method", "metric"])
    table = outputs.table.with_columns(
        d1=pl.col("dataset").str.extract(r"d1=(\d+)").cast(pl.Int64),
        s=pl.col("dataset").str.extract(r"-s=(\d+)").cast(pl.Int64),
    )
    lines = [f"{'d1':>6} {'d2':>5} {'s':>3} {'k':>4} | {'global':>8} {'1-d2/d1':>8} | {'TTT':>10} {'σ²s·log(d1/s)/k':>16}"]
    for r in table.filter(pl.col("method") == "global").sort(["d1", "s", "model_size", "k"]).iter_rows(named=True):
        key = (pl.col("dataset") == r["dataset"]) & (pl.col("model_size") == r["model_size"]) & (pl.col("method") == "ttt")
        for t in table.filter(key).sort("k").iter_rows(named=True):
            lines.append(
                f"{r['d1']:>6} {r['model_size']:>5} {r['s']:>3} {t['k']:>4} | {r['mean']:8.4f} "
                f"{_global_prediction(r):>8} | {t['mean']:10.2e} "
                f"{ttt_rate(cfg.noise, r['s'], r['d1'], t['k']):16.2e}"
            )
    print("squared error against the noiseless target (mean over test points)")
    print("\n".join(lines))
    figure = plot_theory(table, Path(cfg.out_dir) / "figure.png")
    print(f"\nwrote {outputs.points}, {outputs.summary} and {figure}")
    return outputs.table


def _global_prediction(row: dict) -> str:
    """1 - d2/d1 holds for the §C.3 instance (s = 1, w* = 1); other rows have no closed form."""
    return f"{global_error_prediction(row['d1'], row['model_size']):8.4f}" if row["s"] == 1 else "-"


def plot_theory(table: pl.DataFrame, path: Path) -> Path:
    from dashboards.figures import plot_theory_check

    return plot_theory_check(table.filter(pl.col("s") == 1), path)  # the §C.3 instance


if __name__ == "__main__":
    main()
