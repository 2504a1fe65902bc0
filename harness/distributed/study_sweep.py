"""The sweep options every study script shares: where its Ray cluster is, where its Ray Tune sweeps live,
whether to restore a killed sweep, and what each trial reserves. One parser helper, one config, one Ray
session, so `python studies/<x>.py` (a local Ray) and `ray submit cluster.yaml studies/<x>.py -- <args>`
(the cluster) run the same trials.

    p = argparse.ArgumentParser(); add_sweep_args(p)
    options = sweep_options_from_args(p.parse_args(argv))
    options.sweep("mlp_scaling", out_dir)  # -> SweepConfig, rows under <out_dir>/sweeps/mlp_scaling/rows/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import ray

from harness.distributed.runtime import init_ray
from harness.distributed.sweep import SweepConfig


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    address: str | None = None  # None: RAY_ADDRESS or a new local Ray; "auto": this machine's cluster
    resume: bool = False  # restore the killed sweep (Tuner.restore); finished trials are never redone anyway
    storage_path: str | None = None  # Ray Tune storage (shared folder or bucket URI); None: <out_dir>/sweeps
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the study's device is "cuda", else 0

    def __post_init__(self) -> None:
        if self.cpus_per_trial < 0 or (self.gpus_per_trial or 0.0) < 0:
            raise ValueError(f"SweepOptions.cpus_per_trial and gpus_per_trial must be >= 0, got "
                             f"{self.cpus_per_trial} and {self.gpus_per_trial}")

    def sweep(self, name: str, out_dir: str, device: str | None = None, metric: str = "n_rows",
              mode: str = "max") -> SweepConfig:
        """The study's SweepConfig: `<storage_path or out_dir/sweeps>/<name>`. A grid has no objective, so
        Tune's metric defaults to `n_rows`, which every trial reports (studies differ in their metrics).
        device "cuda" reserves one GPU per trial unless gpus_per_trial says otherwise (Ray hides GPUs from
        trials that reserve none)."""
        storage = self.storage_path or str(Path(out_dir) / "sweeps")
        gpus = self.gpus_per_trial if self.gpus_per_trial is not None else (1.0 if device == "cuda" else 0.0)
        return SweepConfig(name, storage, cpus_per_trial=self.cpus_per_trial, gpus_per_trial=gpus,
                           metric=metric, mode=mode)


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    """--address, --resume, --storage-path, --cpus-per-trial, --gpus-per-trial."""
    g = parser.add_argument_group("Ray (local by default; `ray submit cluster.yaml studies/<x>.py -- ...` for a cluster)")
    g.add_argument("--address", help="Ray cluster address ('auto' under ray submit; default: RAY_ADDRESS or local)")
    g.add_argument("--resume", action="store_true", help="restore the killed sweep and finish it")
    g.add_argument("--storage-path", help="Ray Tune storage: shared folder or s3://... (default: <out-dir>/sweeps)")
    g.add_argument("--cpus-per-trial", type=float, help="CPUs each trial reserves (default 1)")
    g.add_argument("--gpus-per-trial", type=float, help="GPUs each trial reserves (default: 1 with --device cuda, else 0; fractions share a GPU)")


def sweep_options_from_args(args: argparse.Namespace) -> SweepOptions:
    given = {"address": args.address, "resume": args.resume or None, "storage_path": args.storage_path,
             "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial}
    return SweepOptions(**{k: v for k, v in given.items() if v is not None})


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Join (or start locally) Ray for the block; shut it down afterwards only if this block started it."""
    connected_here = init_ray(address)
    try:
        yield
    finally:
        if connected_here:
            ray.shutdown()
