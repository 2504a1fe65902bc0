"""S11 — theory check (paper §5, §C.3): on synthetic data under the linear representation hypothesis,
the global least-squares model's error approaches 1 - d2/d1 while TTT's error stays at σ² s log(d1/s)/k.

Run:
    python studies/theory_check.py                 # default grid, about a minute on a 2-core CPU (Ray start,
                                                   # one Tune trial per cell)
    python studies/theory_check.py --d1 256 1024 4096 --d2 8 16 32 64 128 --k 10 40 --noise 0.1
    python studies/theory_check.py --resume        # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/theory_check.py -- --d1 256 1024 4096

Every (d1, d2, s, k) cell is one Ray Tune trial; a local Ray starts when no cluster is found.
Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs d2/d1 with the prediction); each
trial's rows under <out-dir>/sweeps/theory_check/rows/ (or under --storage-path).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.figures import plot_theory_check  # noqa: E402
from dashboards.outputs import finish_study  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.synthetic import LRHConfig  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.trials.lrh import TheoryTrialConfig, global_error_prediction, ttt_rate  # noqa: E402


@dataclasses.dataclass(frozen=True)
class TheoryCheck:
    """S11's options (each trial: one (d1, d2, s, k) cell of synthetic linear-representation data)."""

    d1: tuple[int, ...] = (128, 512)  # number of concepts
    d2: tuple[int, ...] = (8, 16, 32, 64)  # feature dimension (the model size; at most every d1: superposition)
    s: tuple[int, ...] = (1, 4)  # concepts active per point (s > 1: random positive concept weights)
    k: tuple[int, ...] = (20,)  # neighbours of TTT
    noise: float = 0.1  # σ of the targets; the global column also shows the noiseless §C.3 prediction
    points_per_cluster: int = 60  # training points per neighbourhood (must exceed every k)
    n_test: int = 400  # test points
    seed: int = 0  # data seed
    out_dir: str = "results/theory_check"  # tables, figure and the sweep's storage
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        """Refuse, before any work, a grid the theory does not cover (paper §5, §C.3)."""
        for option, values in (("--d1", self.d1), ("--d2", self.d2), ("--s", self.s), ("--k", self.k)):
            bad = [v for v in values if v < 1]
            if not values:
                raise ConfigError(f"{option} needs at least one value")
            if bad:
                raise ConfigError(f"{option} must be >= 1, got {bad}")
        if self.n_test < 1:
            raise ConfigError(f"--n-test must be >= 1, got {self.n_test}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"--noise must be >= 0 and finite, got {self.noise}")
        too_sparse = [(s, d1) for s in self.s for d1 in self.d1 if s > d1]
        if too_sparse:
            raise ConfigError("; ".join(f"--s {s} exceeds --d1 {d1}" for s, d1 in too_sparse)
                              + ": a point's s active concepts are s of the d1")
        # Proposition 8 (§C.3) assumes d2 <= d1: d1 concepts in superposition in d2 dimensions (d2 = d1: Remark 9,
        # the global model is exact). Beyond it 1 - d2/d1 is negative, and Proposition 3 assumes d2 << d1 too.
        wide = [(d2, d1) for d2 in self.d2 for d1 in self.d1 if d2 > d1]
        if wide:
            raise ConfigError("; ".join(f"--d2 {d2} exceeds --d1 {d1}" for d2, d1 in wide)
                              + ": the theory (paper §5, §C.3) holds d1 concepts in superposition in d2 <= d1 feature "
                              "dimensions, and its global error 1 - d2/d1 is negative beyond; give --d2 values no "
                              "larger than every --d1")
        # a test point's k neighbours should come from its own neighbourhood, which shares its concepts (Hypothesis
        # 2; with s = 1 its points share one feature vector); a neighbourhood holds points_per_cluster on average
        if self.points_per_cluster <= max(self.k):
            raise ConfigError(f"--points-per-cluster {self.points_per_cluster} must exceed every --k "
                              f"(got {max(self.k)}): TTT's k neighbours should come from the test point's own "
                              "neighbourhood (the theory's Hypothesis 2), which holds --points-per-cluster training "
                              "points on average")

    def trials(self) -> list[TheoryTrialConfig]:
        out = []
        for d1, d2, s, k in itertools.product(self.d1, self.d2, self.s, self.k):
            clusters = d1 // s
            out.append(TheoryTrialConfig(LRHConfig(
                d1=d1, d2=d2, s=s, n_train=clusters * self.points_per_cluster, n_test=self.n_test, noise=self.noise,
                coefficient_jitter=0.0 if s == 1 else 0.5, seed=self.seed), k=k))
        return out


PRESETS = {"smoke_test": TheoryCheck(d1=(128,), d2=(8, 32), s=(1,), n_test=100, out_dir="results/theory_check_smoke")}


parse = study_parser(TheoryCheck, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    rows = run_study(cfg, trials, name="theory_check", out_dir=cfg.out_dir, metric="ttt_squared_error")
    outputs = finish_study(rows, cfg.out_dir, by=["dataset", "model_size", "k", "method", "metric"])
    table = outputs.table.with_columns(
        d1=pl.col("dataset").str.extract(r"d1=(\d+)").cast(pl.Int64),
        s=pl.col("dataset").str.extract(r"-s=(\d+)").cast(pl.Int64),
    )
    lines = [f"{'d1':>6} {'d2':>5} {'s':>3} {'k':>4} | {'global':>8} {'1-d2/d1':>8} | "
             f"{'TTT':>10} {'σ²s·log(d1/s)/k':>16}"]
    for r in table.filter(pl.col("method") == "global").sort(["d1", "s", "model_size", "k"]).iter_rows(named=True):
        key = ((pl.col("dataset") == r["dataset"]) & (pl.col("model_size") == r["model_size"])
               & (pl.col("method") == "ttt"))
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
    return plot_theory_check(table.filter(pl.col("s") == 1), path)  # the §C.3 instance


if __name__ == "__main__":
    raise SystemExit(run_main(main))
