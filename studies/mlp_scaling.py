"""S2 — model scaling with MLP heads on embeddings (paper §4.2, Fig 4 middle, §E.6): global 2-layer MLP
(hidden 250..4000, Table 7) vs TTT of its last layer over the frozen hidden features (k = 100, lr 5e-3,
50 full-batch Adam steps, Table 8) vs majority vote (k = 10) in the hidden space.

The paper runs this on CLIP ViT-B/32 ImageNet embeddings. Neither is available offline, so the embedded
default runs on MNIST pixels (784-d, L2-normalised) as stand-in "embeddings" and says so in its output;
point it at real embeddings with --embeddings or --image-folder.

Run (from the repository root):
    python studies/mlp_scaling.py                # embedded default: MNIST pixels, hidden 250 / 1000 / 4000,
                                                 # 2 epochs, 1000 test points; a few minutes on a laptop CPU
    python studies/mlp_scaling.py --paper --embeddings imagenet_train.npy imagenet_val.npy
    python studies/mlp_scaling.py --paper --image-folder /data/imagenet/train /data/imagenet/val
    python studies/mlp_scaling.py --resume       # finish a killed run; finished trials are not redone
    ray submit cluster.yaml studies/mlp_scaling.py -- --paper --embeddings train.parquet val.parquet

Output: <out-dir>/points.parquet, summary.parquet, figure.png (error vs hidden size), the table printed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.outputs import finish_study  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.models.mlp import MLP_SPECS  # noqa: E402
from harness.trials.embedding_head import EmbeddingHeadConfig, EmbeddingOptions  # noqa: E402
from harness.trials.options import ComputeOptions  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MlpScaling:
    """S2's options (each trial: one MLP hidden size x seed)."""

    hidden: tuple[int, ...] = (250, 1000, 4000)  # MLP hidden sizes (of Table 7's 250 ... 4000)
    seeds: tuple[int, ...] = (0,)  # global-training seeds
    epochs: int | None = 2  # global training epochs of the MLP (None: Table 7's 50)
    test_points: int | None = 1000  # test points, a fixed seeded subset (None: the whole test set)
    out_dir: str = "results/mlp_scaling"  # tables, figure and the sweep's storage
    data: EmbeddingOptions = EmbeddingOptions()
    compute: ComputeOptions = ComputeOptions()  # --device, --engine
    ray: RayOptions = RayOptions()

    def trials(self, study: str = "mlp_scaling") -> list[EmbeddingHeadConfig]:
        source = self.data.source(f"{self.out_dir}/clip")
        return [EmbeddingHeadConfig(source=source, hidden=h, seed=s, epochs=self.epochs, test_points=self.test_points,
                                    **dataclasses.asdict(self.compute), study=study,
                                    cache_dir=str(Path(self.out_dir, "features").resolve()))
                for h in self.hidden for s in self.seeds]


PRESETS = {
    "paper": MlpScaling(hidden=tuple(sorted(MLP_SPECS)), epochs=None, test_points=None,
                        out_dir="results/mlp_scaling_paper"),
    "smoke_test": MlpScaling(hidden=(250,), epochs=1, test_points=200, out_dir="results/mlp_scaling_smoke"),
}


def run_heads(cfg: MlpScaling, study: str) -> pl.DataFrame:
    """Every (hidden, seed) trial's rows; the embeddings are loaded once and shared by the trials."""
    trials = cfg.trials(study)  # every trial config validated before any work
    return run_study(cfg, trials, name=study, out_dir=cfg.out_dir, metric="ttt_error",
                     shared={"splits": trials[0].source.load()})


parse = study_parser(MlpScaling, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    outputs = finish_study(
        run_heads(cfg, "mlp_scaling").filter(pl.col("metric") == "error"), cfg.out_dir,
        by=["model_size", "method", "metric"], stand_in=cfg.data.source(cfg.out_dir).stand_in,
        figure={"metric": "error", "x": "model_size", "xlabel": "Hidden dimension", "ylabel": "Test error",
                "title": "MLP heads on embeddings (S2)", "percent": True},
    )
    outputs.print_report(
        f"data: {cfg.data.source(cfg.out_dir).describe()}",
        f"heads: Table 7 MLPs, {cfg.epochs or 50} epochs; TTT k 100, lr 5e-3, 50 steps; "
        f"{cfg.test_points or 'all'} test points",
        index="model_size",
        paper="paper (Fig 4 middle, ImageNet): TTT < global < majority vote at small hidden sizes, "
              "the gap shrinking with size")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
