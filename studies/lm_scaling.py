"""S3 — model scaling of LoRA TTT on the Pile (paper Fig 4 right, §E.7): bits per byte of the global LM and
after LoRA TTT on retrieved neighbours, by model size.

Each model is one Ray Tune trial. Inside it, Ray Data shards the sampled test sequences over an actor pool
(--actors); every actor holds an index replica, the sentence embedder and the LM, and runs the batched
multi-LoRA engine. The corpus index is built once (on the pool) and cached for the other model sizes.

Run (from the repository root):
    python studies/lm_scaling.py --smoke-test     # CPU, offline: a tiny random Qwen2 on generated topical text
    python studies/lm_scaling.py --train /data/pile/train/00.jsonl.zst --test /data/pile/test.jsonl.zst \\
        --models 0.5B 1.5B 3B 7B 14B 32B --device cuda
    python studies/lm_scaling.py --paper --train ... --test ...    # all six Qwen2.5 sizes on GPUs, 1% of test
    python studies/lm_scaling.py --resume ...     # finish a killed run; finished model sizes are not redone
    ray submit cluster.yaml studies/lm_scaling.py -- --paper --train ... --test ...

As the paper's code (tttlm): neighbours are whole training documents, each cut into chunks of at most
--max-tokens tokens, one Adam step per chunk, the most similar document first; LoRA rank 64 on q_proj and
v_proj (--target-modules), about 1 % of the parameters (the share is printed before any work); retrieval by
--embedder with mean pooling (tttlm: a Pile-trained RoBERTa-large with --retrieval-metric l2; MiniLM with cosine
is the offline default).

Placement: one GPU per actor for 0.5B-14B; 32B (64 GB of bf16 weights) gets 2 GPUs per actor, split over
them with device_map="auto" (--gpus-per-actor overrides). Output: <out-dir>/points.parquet (bits per byte and
evaluated bytes per test sequence, method and Pile subset), summary.parquet (the mean over sequences, and
tttlm's Pile-weighted total when the test sequences carry Pile subsets), figure.png (Fig 4 right with 90%
bootstrap CIs: the Pile-weighted total when there is one, else the per-sequence mean; its axis says which), the
tables.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dashboards.outputs import finish_study, format_table  # noqa: E402
from dashboards.pile import PILE_WEIGHTED, pile_weighted_summary, why_not_pile_weighted  # noqa: E402
from harness.cli import invocation, run_main, study_parser  # noqa: E402
from harness.distributed.study import RayOptions, run_study  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.retrieval.text_index import IndexKind, RetrievalMetric  # noqa: E402
from harness.trials.lm import SMOKE_TTT, LMScalingTrialConfig, smoke_inputs  # noqa: E402
from harness.trials.options import Device  # noqa: E402
from harness.ttt.lora_config import LMTTTConfig  # noqa: E402
from harness.ttt.lora_engines import LoRAEngine  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LMScaling:
    """S3's options (each trial: one model size)."""

    models: tuple[str, ...] = ("0.5B",)  # model folders or Qwen2.5 size labels (0.5B ... 32B), one trial each
    train: str | None = None  # training corpus, the retrieval pool: .jsonl / .jsonl.zst / .txt / HF dataset folder
    test: str | None = None  # test corpus, same formats
    fraction: float = 0.01  # share of test sequences evaluated (paper: 1% of the Pile test split)
    seed: int = 0  # seed of the test sample
    embedder: str | None = None  # retrieval encoder folder or hub name, mean pooling (None: all-MiniLM-L6-v2, offline)
    retrieval_metric: RetrievalMetric = "cosine"  # cosine: normalised embeddings; l2: raw ones (tttlm, RoBERTa)
    index_kind: IndexKind = "auto"  # text index: flat (exact), ivfpq or hnsw; auto: flat up to 100k documents
    ttt: LMTTTConfig = LMTTTConfig()  # LoRA TTT hyperparameters (paper Table 9)
    engine: LoRAEngine = "batched"  # batched: many sequences' adapters at once; peft: the one-sequence reference
    max_batch: int = 16  # test sequences per actor call, trained together by the batched engine
    device: Device = "cpu"  # where the actors run the LM and the embedder
    smoke_inputs: bool = False  # generate the corpus and model (no --train/--test/--models) under <out-dir>/inputs
    out_dir: str = "results/lm_scaling"  # tables, figure, the index cache and the sweep's storage
    ray: RayOptions = RayOptions(actors=2)

    def trials(self) -> list[LMScalingTrialConfig]:
        train, test, models = self.train, self.test, self.models
        replaced = [f"--{name} {' '.join(value) if isinstance(value, tuple) else value}"
                    for name, value in (("train", train), ("test", test), ("models", models))
                    if value and _given(self, name)]
        if self.smoke_inputs and replaced:  # before anything is generated
            raise ConfigError(f"{', '.join(replaced)} cannot be used with --smoke-test (--smoke-inputs): it runs on "
                              "a generated corpus and a tiny random Qwen2 instead; leave --smoke-test out to run on "
                              f"{'them' if len(replaced) > 1 else 'it'} (--smoke-test sets --models to none)")
        if not self.smoke_inputs and not models:
            raise ConfigError("--models needs at least one model folder, Qwen2.5 size label or hub name")
        if self.smoke_inputs:
            folder = Path(self.out_dir, "inputs").resolve()
            train, test, model = (smoke_inputs(folder) if not (folder / "tiny_qwen2").exists() else
                                  (str(folder / "topical" / "train.jsonl"), str(folder / "topical" / "test.jsonl"),
                                   str(folder / "tiny_qwen2")))
            models = (model,)
        if not (train and test):
            raise ConfigError("--train and --test are required (or --smoke-test)")
        gpus = self.ray.gpus_per_actor or None  # None: the trial's default for its model
        return [LMScalingTrialConfig(
            model=str(Path(m).resolve()) if Path(m).exists() else m, train=str(Path(train).resolve()),
            test=str(Path(test).resolve()), fraction=self.fraction, seed=self.seed, embedder=self.embedder,
            retrieval_metric=self.retrieval_metric, index_kind=self.index_kind, ttt=self.ttt, engine=self.engine,
            max_batch=self.max_batch, device=self.device, actors=self.ray.actors, gpus_per_actor=gpus,
            cache_dir=str(Path(self.out_dir, "index").resolve())) for m in models]


def _given(cfg: LMScaling, name: str) -> bool:
    """Whether option `name` was given: on the command line it was parsed from, else (built in code) whether it
    differs from the field's default (a default is no choice of the user's)."""
    how = invocation(cfg)
    if how is not None:
        return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in how.options)
    return getattr(cfg, name) != next(f.default for f in dataclasses.fields(LMScaling) if f.name == name)


PRESETS = {
    "paper": LMScaling(models=("0.5B", "1.5B", "3B", "7B", "14B", "32B"), device="cuda",
                       out_dir="results/lm_scaling_paper"),
    "smoke_test": LMScaling(models=(), smoke_inputs=True, fraction=1.0, ttt=SMOKE_TTT, max_batch=4,
                            out_dir="results/lm_scaling_smoke"),
}
parse = study_parser(LMScaling, PRESETS, __doc__)  # the options: a preset, then those given beside it


def main(argv: list[str] | None = None) -> pl.DataFrame:
    cfg = parse(argv)
    trials = cfg.trials()  # every trial config validated before any work
    gpus = max(t.resolved_gpus_per_actor() for t in trials)  # each trial's actors reserve the largest model's share
    rows = run_study(cfg, trials, name="lm_scaling", out_dir=cfg.out_dir, metric="ttt_bits_per_byte",
                     ray_options=dataclasses.replace(cfg.ray, gpus_per_actor=gpus))
    weighted = pile_weighted_summary(rows)  # None unless every test sequence carries a Pile subset
    shown, ylabel = ((PILE_WEIGHTED, "Bits per byte, Pile-weighted (tttlm)") if weighted is not None else
                     ("bits_per_byte", "Bits per byte, mean over test sequences"))
    outputs = finish_study(
        rows, cfg.out_dir, by=["model_size", "method", "metric"], extra_summary=weighted,
        stand_in="generated topical text, a tiny random Qwen2 (for the Pile, Qwen2.5)" if cfg.smoke_inputs else None,
        figure={"metric": shown, "x": "model_size", "xlabel": "Number of parameters", "ylabel": ylabel,
                "title": "LM model scaling (S3)"},
    )
    ttt = rows.filter((pl.col("method") == "ttt") & (pl.col("metric") == "bits_per_byte"))
    data = f"{rows['dataset'][0]}: {ttt.height // ttt['model_size'].n_unique()} test sequences per model"
    lora = ", ".join(f"{h['lora_share']:.2%}" for h in (json.loads(ttt.filter(pl.col("model_size") == m)["hparams"][0])
                                                         for m in sorted(set(ttt["model_size"]))))
    outputs.print_report(f"data: {data}; {cfg.ttt.num_neighbours} neighbours, LoRA rank {cfg.ttt.rank} on "
                         f"{', '.join(cfg.ttt.target_modules)} ({lora} of the parameters)",
                         index="model_size", metric="bits_per_byte", percent=False)
    if weighted is not None:
        covered = ", ".join(f"{c:.0%}" for c in weighted["weight_covered"].unique(maintain_order=True))
        print(format_table(outputs.table, "model_size", PILE_WEIGHTED, percent=False)
              + f"\n(tttlm's Pile weights; subsets in the sample cover {covered} of the weight)")
    else:
        print(f"no Pile-weighted total: {why_not_pile_weighted(rows)}")
    print(f"figure: {ylabel.lower()}\n"
          "paper (Fig 4 right, the Pile): TTT below global at every size, the gap shrinking")
    return outputs.table


if __name__ == "__main__":
    raise SystemExit(run_main(main))
