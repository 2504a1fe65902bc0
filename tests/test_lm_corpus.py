"""Corpus readers, chunking, the S3 split rule, the test sample and bits per byte."""

import json
import math

import numpy as np
import pytest

from harness.data.text import CorruptLineError, read_corpus, read_jsonl
from harness.data.text_split import sample_test_indices, split_point, split_tokens
from harness.eval.bits_per_byte import IGNORE, bits_per_byte, rolling_rows
from harness.ttt.lora import training_rows


def _write_pile(path, rows, corrupt_at=()):
    lines = [json.dumps({"text": t, "meta": {"pile_set_name": s}}) for t, s in rows]
    for i in corrupt_at:
        lines.insert(i, '{"text": "cut off')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reader_counts_and_names_corrupt_lines(tmp_path):
    rows = [("alpha beta", "Pile-CC"), ("gamma é", "Wikipedia (en)"), ("delta", "ArXiv")]
    p = _write_pile(tmp_path / "a.jsonl", rows, corrupt_at=[1])
    c = read_jsonl(p)
    assert c.texts == ["alpha beta", "gamma é", "delta"]
    assert c.subsets == ["Pile-CC", "Wikipedia (en)", "ArXiv"]
    assert c.skipped_lines == [2]
    with pytest.raises(CorruptLineError, match="line 2"):
        read_jsonl(p, on_error="raise")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": 5}\n{"no_text": "x"}\n{"text": "ok"}\n')
    c = read_jsonl(bad)
    assert c.texts == ["ok"] and c.skipped_lines == [1, 2]


def test_jsonl_zst_reader_matches_plain(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    rows = [(f"document {i} " * 3, "Github") for i in range(50)]
    plain = _write_pile(tmp_path / "p.jsonl", rows)
    z = tmp_path / "p.jsonl.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    a, b = read_corpus(plain), read_corpus(z)
    assert a.texts == b.texts and len(b) == 50 and b.subsets[0] == "Github"
    assert len(read_corpus(z, limit=7)) == 7
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("n, expected", [(2, 1), (7, 3), (2047, 1023), (2048, 1024), (5000, 1024)])
def test_split_rule_point_and_no_overlap(n, expected):
    ids = list(range(100, 100 + n))
    assert split_point(n, 1024) == expected
    q, e = split_tokens(ids, 1024)
    assert q + e == ids  # a partition: every token in exactly one part, order kept
    assert set(q).isdisjoint(e) and len(q) == expected and len(e) == n - expected


def test_split_rule_rejects_too_short():
    with pytest.raises(ValueError, match=">= 2 tokens"):
        split_point(1)


def test_test_sample_is_one_percent_seeded_distinct():
    s = sample_test_indices(179_600, 0.01, seed=0)
    assert s.size == 1796 and np.unique(s).size == 1796 and s.min() >= 0 and s.max() < 179_600
    assert np.array_equal(s, sample_test_indices(179_600, 0.01, seed=0))
    assert not np.array_equal(s, sample_test_indices(179_600, 0.01, seed=1))
    with pytest.raises(ValueError):
        sample_test_indices(10, 0.0)


def test_bits_per_byte_formula():
    assert bits_per_byte(math.log(2) * 12, 12) == pytest.approx(1.0)
    assert bits_per_byte(10.0, 5) == pytest.approx(10 / 5 / math.log(2))
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_rolling_rows_score_every_token_once():
    ids = list(range(1, 24))
    rows = rolling_rows(ids, max_tokens=5, prefix_token=0)
    scored = [y for _, lab in rows for y in lab if y != IGNORE]
    assert scored == ids
    assert all(len(x) <= 5 and len(x) == len(lab) for x, lab in rows)
    x0, lab0 = rows[0]
    assert x0[0] == 0 and lab0 == ids[:5]  # first block conditioned on the prefix token only
    x1, lab1 = rows[1]
    assert x1 == ids[4:9] and lab1 == ids[5:10]  # later blocks: the max_tokens tokens before them
    with pytest.raises(ValueError):
        rolling_rows([], 5, 0)


def test_training_rows_chunk_long_neighbours():
    rows = training_rows(list(range(10)), 4)  # chunks [0..3], [4..7], [8, 9]
    assert [x for x, _ in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert rows[0][1] == [1, 2, 3, IGNORE]
    assert len(training_rows(list(range(9)), 4)) == 2  # a trailing 1-token chunk predicts nothing


def test_plain_text_file_packs_paragraphs(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("In the beginning.\n\nAnd the earth was\nwithout form.\n\n\n" + "word " * 500, encoding="utf-8")
    from harness.data.text import read_text_file

    c = read_text_file(p, doc_chars=100)
    assert c.texts[0] == "In the beginning.\n\nAnd the earth was\nwithout form."  # line breaks kept as written
    assert len(c) == 2 and c.texts[1] == ("word " * 500).rstrip()


def test_hf_dataset_reader_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    from harness.data.text import read_hf_dataset

    texts = ["alpha beta", "gamma é", None, "delta"]  # a null text is a skipped row, like a corrupt line
    metas = [{"pile_set_name": "Pile-CC"}, {"pile_set_name": "ArXiv"}, None, {"pile_set_name": None}]
    ds = datasets.Dataset.from_dict({"text": texts, "meta": metas, "n": [1, 2, 3, 4]})
    ds.save_to_disk(str(tmp_path / "one"))
    c = read_hf_dataset(tmp_path / "one")
    assert c.texts == ["alpha beta", "gamma é", "delta"] and len(c) == 3
    assert c.subsets == ["Pile-CC", "ArXiv", ""]  # a null pile_set_name reads as "", never None
    assert c.skipped_lines == [3] and c.source == str(tmp_path / "one")
    assert read_corpus(tmp_path / "one", limit=2).texts == ["alpha beta", "gamma é"]  # dispatch on a folder
    with pytest.raises(CorruptLineError, match="row 3"):
        read_hf_dataset(tmp_path / "one", on_error="raise")

    plain = datasets.Dataset.from_dict({"body": ["x y", "z"]})  # no meta column; text under another name
    datasets.DatasetDict({"train": plain, "test": plain.select([1])}).save_to_disk(str(tmp_path / "dd"))
    c = read_hf_dataset(tmp_path / "dd", split="test", text_field="body")
    assert c.texts == ["z"] and c.subsets == [""] and c.skipped_lines == []
    assert len(read_hf_dataset(tmp_path / "dd", split="train", text_field="body")) == 2
    with pytest.raises(KeyError, match="pass split"):
        read_corpus(tmp_path / "dd")  # a DatasetDict needs a split
    with pytest.raises(KeyError, match="no column 'text'"):
        read_corpus(tmp_path / "dd", split="train")
    with pytest.raises(TypeError, match="not a string column"):
        read_hf_dataset(tmp_path / "one", text_field="n")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_hf_dataset(tmp_path / "missing")
