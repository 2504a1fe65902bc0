"""S3 (model scaling of LoRA TTT on the Pile, paper Fig. 4 right, §E.7): one model size in, result rows out.

    train corpus ──► whole documents ──► embedded on the actor pool ──► text index (cached in cache_dir)
    test corpus  ──► seeded `fraction` of its sequences ──► actor pool (index replica + LM + embedder each):
                     split each sequence into query / evaluated part, retrieve the query's nearest documents,
                     LoRA TTT on them (each document tokenized whole and cut into chunks of <= max_tokens tokens,
                     one Adam step per chunk, the most similar document's chunks first, in text order),
                     bits per byte of the evaluated part with and without the adapter
    ──► rows (study "lm_scaling", methods "global" and "ttt", metrics "bits_per_byte" and "utf8_bytes" per test
        sequence with its Pile subset, model_size = parameters; the LoRA share in the ttt rows' hparams)

As tttlm (Hardt & Sun's code, which the paper ran): the index holds one embedding per training document (the
encoder sees its first 512 tokens), the texts stay as they are (newlines included), the evaluated part never
reaches the retriever (harness.data.text_split), and neighbours come only from the train corpus. Where tttlm
differs and we do not follow: it keeps one AdamW (weight decay 0.01) across test sequences, so Adam's moments
leak from one sequence to the next; here every sequence starts from a fresh adapter and a fresh Adam, as the
paper's Table 9 (Adam, eps 1e-8) and the method require. Its distance filter (4.0) removes nothing and is left out.

The index depends only on the train corpus, the embedder, the retrieval metric and the index kind, so the trials
of every model size share one cached copy. Called inside a Ray Tune trial, the actors join the trial's
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
from harness.features.text_embedder import embedder_unloadable_reason
from harness.models.hub import is_local_path
from harness.models.lm import (
    QWEN25_SIZES,
    count_parameters,
    load_tokenizer,
    model_skeleton,
    resolve_model_name,
    unloadable_reason,
)
from harness.models.lora import lora_parameter_count
from harness.models.tiny_qwen2 import make_tiny_qwen2
from harness.registry import register_trial
from harness.results.provenance import code_version, input_fingerprint
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.text_index import (
    INDEX_KINDS,
    PQ_CENTROIDS,
    RETRIEVAL_METRICS,
    IndexKind,
    RetrievalMetric,
    TextIndex,
    build_text_retriever,
    min_index_units,
    resolve_index_kind,
)
from harness.trials.options import Device
from harness.ttt.lora import EmptyTextError, split_sequence
from harness.ttt.lora_config import QWEN_LORA_TARGETS, LMTTTConfig
from harness.ttt.lora_engines import LoRAEngine

EMBED_BATCH = 256  # documents per embedding call of an actor
TRAIN, TEST = "LMScalingTrialConfig.train (--train)", "LMScalingTrialConfig.test (--test)"  # as errors name them
TWO_GPU_MODELS = ("Qwen/Qwen2.5-32B",)  # 64 GB of bf16 weights: split over 2 GPUs per actor
# the --smoke-test preset's TTT: the tiny random Qwen2 of smoke_inputs learns visibly from 4 short steps when
# LoRA adapts all seven projections (q_proj + v_proj alone, the paper's ~1 % at 0.5B, move it half as much)
SMOKE_TTT = LMTTTConfig(rank=4, num_neighbours=4, max_tokens=64, max_query_tokens=32, lr=1e-2,
                        target_modules=QWEN_LORA_TARGETS)
MODEL, TARGETS = "LMScalingTrialConfig.model (--models)", "LMTTTConfig.target_modules (--target-modules)"
NEIGHBOURS = "LMTTTConfig.num_neighbours (--num-neighbours)"
INDEX_KIND = "LMScalingTrialConfig.index_kind (--index-kind)"
# a test sequence of at least this many tokens keeps >= half of them as its evaluated part, which cannot decode to
# nothing; shorter ones are split as the engine splits them (split_sequence) to find those that cannot be scored
SPLIT_CHECK_TOKENS = 64


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
    embedder: str | None = None  # retrieval encoder folder or hub name (mean pooling); None: all-MiniLM-L6-v2
    retrieval_metric: RetrievalMetric = "cosine"  # cosine: normalised embeddings; l2: raw ones, tttlm's IndexFlatL2
    index_kind: IndexKind = "auto"  # flat (exact), ivfpq or hnsw; auto: flat up to 100k documents, else ivfpq
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
            ("retrieval_metric", self.retrieval_metric in RETRIEVAL_METRICS, f"must be one of {RETRIEVAL_METRICS}"),
            ("index_kind", self.index_kind in INDEX_KINDS, f"must be one of {INDEX_KINDS}"),
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
            raise ConfigError(f"{MODEL} = {self.model!r} cannot load: {why_not}; give a "
                              f"model folder with config.json, a Qwen2.5 size label ({', '.join(QWEN25_SIZES)}) "
                              "or a hub name owner/name")
        why_not = embedder_unloadable_reason(self.embedder)
        if why_not is not None:
            raise ConfigError(f"LMScalingTrialConfig.embedder (--embedder) = {self.embedder!r} cannot load: {why_not}; "
                              "give an encoder folder with config.json or a hub name owner/name (None: MiniLM)")

    def check_inputs(self, **_: object) -> None:
        """Checks run by the study before Ray starts: the test corpus holds a text to score (what its reader skipped
        is printed, once per file and version), the train corpus at least num_neighbours documents and as many as
        the index kind needs, the model has a linear layer for every LoRA target (its LoRA share printed, once per
        model and targets), and every sampled test sequence splits into a query and an evaluated part under the
        model's tokenizer."""
        stamp = _file_stamp(self.test)
        _check_test_corpus(self.test, stamp)
        train = read_corpus(self.train, limit=max(self.ttt.num_neighbours, min_index_units(self.index_kind)))
        require_text(train, TRAIN)  # the read stops once there are enough documents
        lora_params, n_params = lora_share(self.model, self.ttt.target_modules, self.ttt.rank)
        _print_share(self.model, self.ttt.target_modules, self.ttt.rank, lora_params, n_params)
        check_train_size(self, len(train), skipped_summary(train))
        _check_test_sample(self.model, self.test, stamp, self.fraction, self.seed, self.ttt)

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


@functools.lru_cache(maxsize=16)
def lora_share(model: str, target_modules: tuple[str, ...], rank: int) -> tuple[int, int]:
    """(trainable LoRA parameters of one adapter, parameters of the model) from the model's config alone (its
    skeleton on the meta device: nothing loaded or downloaded beyond config.json). ConfigError naming the field
    for a config that cannot be read or a target that matches no linear layer."""
    try:
        skeleton = model_skeleton(resolve_model_name(model))
    except ValueError as e:
        raise ConfigError(f"{MODEL} = {model!r}: {e}") from None
    try:
        return lora_parameter_count(skeleton, target_modules, rank), count_parameters(skeleton)
    except ValueError as e:
        raise ConfigError(f"{TARGETS} = {target_modules!r} for {model!r}: {e}") from None


@functools.lru_cache(maxsize=16)
def _print_share(model: str, targets: tuple[str, ...], rank: int, lora_params: int, n_params: int) -> None:
    print(f"{model}: LoRA rank {rank} on {', '.join(targets)} trains {lora_params:,} parameters per test sequence, "
          f"{lora_params / n_params:.2%} of its {n_params:,}")


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


def check_train_size(cfg: LMScalingTrialConfig, documents: int, skipped: str = "") -> None:
    """Refuse a train corpus of fewer `documents` than the neighbours each test sequence trains on, or than the
    index kind can be built over (ConfigError naming the option and the file). `skipped`: what its reader skipped."""
    where = f"{TRAIN} {cfg.train} holds only {documents} documents" + (f" ({skipped})" if skipped else "")
    if documents < cfg.ttt.num_neighbours:
        raise ConfigError(f"{NEIGHBOURS} = {cfg.ttt.num_neighbours} but {where}: every test sequence trains on that "
                          f"many distinct documents; give --num-neighbours <= {documents} or a larger train corpus")
    if documents < min_index_units(cfg.index_kind):
        raise ConfigError(f"{INDEX_KIND} = {cfg.index_kind!r} needs at least {min_index_units(cfg.index_kind)} train "
                          f"documents (its product quantiser trains {PQ_CENTROIDS} centroids), but {where}; use "
                          "--index-kind flat, hnsw or auto")


@functools.lru_cache(maxsize=4)
def _test_sample(path: str, stamp: tuple[int, int] | None, fraction: float, seed: int,
                 ) -> tuple[Corpus, list[tuple[int, str]]]:
    """The test corpus at `path` and its seeded sample, read once per file version and sample for all models."""
    test = read_corpus(path)
    return test, sample_points(test, fraction, seed)


@functools.lru_cache(maxsize=16)
def _check_test_sample(model: str, path: str, stamp: tuple[int, int] | None, fraction: float, seed: int,
                       ttt: LMTTTConfig) -> None:
    """check_test_sequences on the seeded sample of the test corpus at `path` (once per model, file version,
    sample and split rule: the study checks every model's trial against the same corpus). A hub model whose
    tokenizer is not on this machine (a head node without the model cache) is left to the trial's own check on
    its worker, and that is printed."""
    test, points = _test_sample(path, stamp, fraction, seed)
    check_test_sequences(test, points, model, ttt, local_only=not is_local_path(resolve_model_name(model)))


def check_test_sequences(test: Corpus, points: list[tuple[int, str]], model: str, ttt: LMTTTConfig,
                         local_only: bool = False) -> None:
    """Refuse a test sequence (point_id, text) of `test` that `model`'s tokenizer cannot split into a query and an
    evaluated part (split_sequence: fewer than 2 tokens, or an evaluated part that decodes to nothing): a
    ConfigError naming the file and the line, before any work. `local_only` (a hub model checked on the driver): a
    tokenizer that cannot load is not an error (say so and return): the check runs again where the model is."""
    try:
        tokenizer = load_tokenizer(model)
    except (OSError, ValueError) as e:  # FileNotFoundError: not cached offline; ValueError: no tokenizer files
        if local_only:
            print(f"{model}: its tokenizer is not on this machine; the test sequences are checked on the workers")
            return
        raise ConfigError(f"{MODEL} = {model!r}: its tokenizer cannot load ({e})") from None
    ids = tokenizer([text for _, text in points], add_special_tokens=False)["input_ids"]  # one batched call
    for (point_id, text), n in zip(points, map(len, ids), strict=True):
        if n >= SPLIT_CHECK_TOKENS:
            continue
        if n == 0:  # the reader skips blank texts: a text of no token at all says more about the tokenizer
            raise ConfigError(f"{MODEL} = {model!r}: its tokenizer turns the text on {test.where(point_id)} of "
                              f"{TEST} {test.source} into no token at all ({text[:40]!r}); does its folder lack "
                              "the tokenizer's files?")
        try:
            split_sequence(tokenizer, point_id, text, ttt)
        except EmptyTextError as e:
            raise ConfigError(f"{TEST} {test.source}: the text on {test.where(point_id)} cannot be scored with "
                              f"{model}'s tokenizer: {e}; remove it from the file") from None


def _embedder_key(embedder: str | None) -> list[str]:
    """What identifies the embedder's weights: their files' fingerprints, or the hub name."""
    from harness.features.text_embedder import minilm_path

    folder = str(minilm_path()) if embedder is None else embedder
    return sorted(input_fingerprint([folder]).values()) if is_local_path(folder) else [folder]


# the modules that read, embed and index the train corpus: the index cache's code version (an edit elsewhere keeps
# an index whose embedding took hours)
INDEX_CODE = ("data/text.py", "features/text_embedder.py", "distributed/lm_sharding.py", "retrieval/text_index.py",
              "retrieval/index.py", "retrieval/approximate.py")


def corpus_index_key(cfg: LMScalingTrialConfig) -> str:
    """What the cached corpus index depends on: the train corpus's content, the embedder's weights, the metric, the
    index kind and the code that reads and embeds the corpus (INDEX_CODE)."""
    return config_hash({"train": sorted(input_fingerprint([cfg.train]).values()), "documents": "whole",
                        "embedder": _embedder_key(cfg.embedder), "metric": cfg.retrieval_metric,
                        "index_kind": cfg.index_kind, "code_version": code_version(*INDEX_CODE)})


def corpus_index(cfg: LMScalingTrialConfig, sharding: ShardingConfig) -> TextIndex:
    """The text index over cfg.train's documents (whole, as they are: one embedding and one entry each), read from
    cfg.cache_dir (under corpus_index_key) or built on the actor pool (and saved)."""
    from harness.features.text_embedder import DEFAULT_EMBEDDER

    folder = Path(cfg.cache_dir) / f"text-index-{corpus_index_key(cfg)}" if cfg.cache_dir is not None else None
    if folder is not None and folder.exists():
        index = TextIndex.load(folder)
        check_train_size(cfg, len(index.texts))  # the cache's key holds no neighbour count
        return index
    train = read_corpus(cfg.train)
    require_text(train, TRAIN)  # before anything is embedded
    check_train_size(cfg, len(train), skipped_summary(train))
    if skipped_summary(train):
        print(f"train corpus {cfg.train}: {skipped_summary(train)}")
    docs = train.texts  # whole documents: the TTT engine tokenizes and chunks each neighbour itself
    embed = dataclasses.replace(sharding, gpus_per_actor=min(1.0, sharding.gpus_per_actor), batch_size=EMBED_BATCH)
    vectors = embed_texts_sharded(docs, cfg.embedder, embed, device=cfg.device,
                                  normalize=cfg.retrieval_metric == "cosine")
    info = {"train": cfg.train, "train_skipped_lines": len(train.skipped_lines),
            "train_blank_texts": len(train.blank_lines), "train_documents": len(docs),
            "retrieval_metric": cfg.retrieval_metric, "index_kind": resolve_index_kind(cfg.index_kind, len(docs))}
    index = TextIndex(build_text_retriever(vectors, cfg.index_kind, cfg.retrieval_metric), docs,
                      cfg.embedder or DEFAULT_EMBEDDER, info)
    if folder is not None:
        index.save(folder, overwrite=False)  # a concurrent trial of another model size may have saved it first
    return index


def sample_points(test: Corpus, fraction: float, seed: int) -> list[tuple[int, str]]:
    """(point_id, text) of the seeded test sample; point_id = the sequence's position in the corpus."""
    return [(int(i), test.texts[i]) for i in sample_test_indices(len(test), fraction, seed)]


@register_trial("lm_scaling", LMScalingTrialConfig)
def lm_scaling_trial(cfg: LMScalingTrialConfig) -> pl.DataFrame:
    """Per-sequence bits per byte and evaluated UTF-8 bytes of the global LM and after LoRA TTT, each row with the
    sequence's Pile subset (null outside the Pile): 4 rows per sampled test sequence. The bytes and subsets give
    tttlm's Pile-weighted total (harness.eval.bits_per_byte); the ttt rows' hparams hold the LoRA share.

    Blank test texts are skipped by the reader (not sampled) and counted in the rows' hparams beside the
    corrupt lines; an empty test or train corpus, a train corpus of fewer documents than num_neighbours (or than
    the index kind needs) and a sampled test text too short to split are refused (ConfigError naming the file)
    before any work. The ttt rows' hparams count the sequences an approximate index found fewer neighbours for."""
    start = time.perf_counter()
    gpus = cfg.resolved_gpus_per_actor()
    sharding = ShardingConfig(actors=cfg.actors, gpus_per_actor=gpus, batch_size=cfg.max_batch)
    test = read_corpus(cfg.test)
    require_text(test, TEST)
    require_text(read_corpus(cfg.train, limit=1), TRAIN)  # as check_inputs: both corpora before the tokenizer
    points = sample_points(test, cfg.fraction, cfg.seed)
    check_test_sequences(test, points, cfg.model, cfg.ttt)  # before the index is embedded
    index = corpus_index(cfg, sharding)
    spec = LMActorSpec(model=cfg.model, engine=cfg.engine, max_batch=cfg.max_batch, device=cfg.device,
                       dtype="bfloat16" if cfg.device == "cuda" else "float32",
                       device_map="auto" if gpus > 1 else None, embedder=cfg.embedder,
                       normalize=cfg.retrieval_metric == "cosine")
    cols = evaluate_lm_sharded(points, spec, cfg.ttt, index, sharding)
    n_params, lora_params = int(cols["n_params"][0]), int(cols["lora_params"][0])
    run = RunInfo(study="lm_scaling", dataset=corpus_name(cfg.test, test), model_size=n_params,
                  seed=cfg.seed, k=cfg.ttt.num_neighbours, fraction=cfg.fraction, config_hash=config_hash(cfg),
                  device="+".join(sorted(set(cols["device"].tolist()))), wall_time_s=time.perf_counter() - start)
    data = {"test_skipped_lines": len(test.skipped_lines), "test_blank_texts": len(test.blank_lines), **index.info,
            "embedder": index.embedder}
    lora = {"lora_params": lora_params, "lora_share": lora_params / n_params}  # counted on the actor's engine
    # flat search finds all k; ivfpq (hnsw, rarely) may find fewer in what it visits: counted, never hidden
    short = {"sequences_short_of_neighbours": int((cols["n_neighbours"] < cfg.ttt.num_neighbours).sum())}
    hparams = {"global": {"model": cfg.model, "data": data},
               "ttt": {"model": cfg.model, "data": data, "engine": cfg.engine, **cfg.ttt.hparams(), **lora, **short}}
    ids = cols["point_id"]
    subsets = [test.subsets[i] or None for i in ids]
    return pl.concat([
        point_rows(run, method, metric, values, ids, hparams[method], subsets=subsets,
                   **({"k": None} if method == "global" else {}))
        for method in ("global", "ttt")
        for metric, values in (("bits_per_byte", cols[f"bpb_{method}"]), ("utf8_bytes", cols["n_bytes"]))
    ])


def smoke_inputs(folder: str | Path) -> tuple[str, str, str]:
    """Write a generated topical corpus (60 train + 12 test documents of 5 lines, JSONL) and a tiny random-weight
    Qwen2 with its trained tokenizer into `folder`, offline. -> (train path, test path, model folder)."""
    root = Path(folder)
    words = [t.split(" ") for t in topical_corpus(72, words_per_doc=60, seed=0)[0]]
    texts = ["\n".join(" ".join(w[i:i + 12]) for i in range(0, len(w), 12)) for w in words]  # lines of 12 words
    train = write_jsonl(root / "topical" / "train.jsonl", texts[:60])
    test = write_jsonl(root / "topical" / "test.jsonl", texts[60:])
    return str(train), str(test), str(make_tiny_qwen2(root / "tiny_qwen2", texts[:60]))
