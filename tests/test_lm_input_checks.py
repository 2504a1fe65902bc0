"""S3's inputs checked against each other before any work: the neighbour count against the train corpus, the index
kind against its size, the test sequences against the model's split rule, and --smoke-test against the options it
would otherwise throw away. No Ray, no embedding, no LM loaded: every refusal comes before work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.errors import ConfigError


class WorkStarted(BaseException):  # noqa: N818  a BaseException: no `except Exception` in the code swallows it
    """Raised by a spy: the bad input reached work it should have been refused before."""


def _spy(what: str):
    def started(*args: object, **kwargs: object) -> None:
        raise WorkStarted(f"{what} was called: the bad input reached work")

    return started


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[str, str, str]:
    """The --smoke-test preset's generated inputs: (train with 60 documents, test with 12, tiny Qwen2 folder)."""
    from harness.trials.lm import smoke_inputs

    return smoke_inputs(tmp_path_factory.mktemp("lm_inputs"))


@pytest.fixture
def no_work(monkeypatch):
    """Every step of S3 that is work (Ray, the sweep, embedding, TTT, loading an LM) raises WorkStarted."""
    for target in ("ray.init", "harness.distributed.study.prepare_sweep", "harness.trials.lm.embed_texts_sharded",
                   "harness.trials.lm.evaluate_lm_sharded", "harness.models.lm.load_causal_lm",
                   "studies.lm_scaling.smoke_inputs"):
        monkeypatch.setattr(target, _spy(target))


def _lines(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def _config(inputs, **overrides):
    from harness.trials.lm import SMOKE_TTT, LMScalingTrialConfig

    train, test, model = inputs
    return LMScalingTrialConfig(**{"model": model, "train": train, "test": test, "fraction": 1.0, "ttt": SMOKE_TTT,
                                   "actors": 1, **overrides})


# ---------------------------------------------------------------- defect 1: more neighbours than train documents
def test_more_neighbours_than_train_documents_is_refused_by_the_study(inputs, tmp_path, no_work):
    import studies.lm_scaling as study

    _, test, model = inputs
    train3 = _write(tmp_path / "train3.jsonl", _lines(inputs[0])[:3])
    with pytest.raises(ConfigError) as err:
        study.main(["--models", model, "--train", train3, "--test", test, "--num-neighbours", "4",
                    "--out-dir", str(tmp_path / "out")])
    message = str(err.value)
    assert "--num-neighbours" in message and "= 4" in message and "3 documents" in message, message
    assert "train3.jsonl" in message and "--train" in message, message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_as_many_neighbours_as_train_documents_is_accepted(inputs, tmp_path, no_work):
    from harness.ttt.lora_config import LMTTTConfig

    train3 = _write(tmp_path / "train3.jsonl", _lines(inputs[0])[:3])
    _config(inputs, train=train3, ttt=LMTTTConfig(num_neighbours=3, max_query_tokens=32)).check_inputs()


def test_the_trial_refuses_more_neighbours_than_documents_before_embedding(inputs, tmp_path, no_work):
    """Called without the study's check (a direct trial call), the corpus index refuses before embedding."""
    from harness.distributed.actor_pool import ShardingConfig
    from harness.trials.lm import corpus_index
    from harness.ttt.lora_config import LMTTTConfig

    blank = json.dumps({"text": "  "})
    train = _write(tmp_path / "train.jsonl", [*_lines(inputs[0])[:2], blank])  # 2 documents, 1 blank text
    cfg = _config(inputs, train=train, ttt=LMTTTConfig(num_neighbours=3), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"--num-neighbours\) = 3 .*only 2 documents.*1 blank text"):
        corpus_index(cfg, ShardingConfig(actors=1))


def test_text_index_search_refuses_k_beyond_its_texts():
    from harness.retrieval.text_index import TextIndex, build_text_retriever

    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = TextIndex(build_text_retriever(x, "flat"), ["a", "b", "c"])
    assert index.search(x[:1], 3)[1].shape == (1, 3)
    with pytest.raises(ValueError, match="k = 4 .* 3 texts"):
        index.search(x[:1], 4)
    with pytest.raises(ValueError, match="k = 4 .* 3 texts"):
        index.neighbour_texts(x[:1], 4)


# ---------------------------------------------------------------- defect 2: options thrown away by --smoke-test
@pytest.mark.parametrize("given, named", [
    (["--train", "/nonexistent.jsonl", "--test", "/nonexistent2.jsonl", "--models", "7B"],
     ["--train /nonexistent.jsonl", "--test /nonexistent2.jsonl", "--models 7B"]),
    (["--models", "0.5B"], ["--models 0.5B"]),
    (["--test", "x.jsonl"], ["--test x.jsonl"]),
])
def test_smoke_test_refuses_the_inputs_it_would_replace(given, named, tmp_path, no_work):
    import studies.lm_scaling as study

    with pytest.raises(ConfigError) as err:
        study.main(["--smoke-test", *given, "--out-dir", str(tmp_path / "out")])
    message = str(err.value)
    assert all(n in message for n in named) and "--smoke-test" in message, message
    assert not (tmp_path / "out").exists()


def test_smoke_test_alone_still_builds_its_trial(inputs, tmp_path, monkeypatch):
    import studies.lm_scaling as study

    monkeypatch.setattr(study, "smoke_inputs", lambda folder: inputs)
    trials = study.parse(["--smoke-test", "--num-neighbours", "2", "--out-dir", str(tmp_path / "out")]).trials()
    train, test, model = (str(Path(p).resolve()) for p in inputs)
    assert [(t.model, t.train, t.test, t.ttt.num_neighbours) for t in trials] == [(model, train, test, 2)]
    with pytest.raises(ConfigError, match="--models needs at least one model"):
        study.LMScaling(models=(), train=train, test=test).trials()


# ---------------------------------------------------------------- defect 3: late failures
def test_a_corpus_too_small_for_the_index_kind_is_refused_before_work(inputs, tmp_path, no_work):
    import studies.lm_scaling as study

    train, test, model = inputs
    with pytest.raises(ConfigError) as err:
        study.main(["--models", model, "--train", train, "--test", test, "--index-kind", "ivfpq",
                    "--out-dir", str(tmp_path / "out")])
    message = str(err.value)
    assert "--index-kind" in message and "'ivfpq'" in message and "256" in message and "60" in message, message
    assert "train.jsonl" in message, message
    _config(inputs, index_kind="hnsw").check_inputs()  # hnsw and flat build over any number of documents


def test_build_text_retriever_names_the_minimum_of_ivfpq():
    from harness.retrieval.text_index import build_text_retriever, min_index_units

    assert min_index_units("ivfpq") == 256 and min_index_units("flat") == min_index_units("auto") == 1
    with pytest.raises(ValueError, match="'ivfpq' index needs at least 256 .* got 60"):
        build_text_retriever(np.ones((60, 16), np.float32), "ivfpq")


def test_a_test_sequence_too_short_to_split_is_refused_naming_file_and_line(inputs, tmp_path, no_work):
    import studies.lm_scaling as study

    train, test, model = inputs
    short = _write(tmp_path / "test_short.jsonl", [*_lines(test), "", json.dumps({"text": "a"})])  # line 14
    with pytest.raises(ConfigError) as err:
        study.main(["--models", model, "--train", train, "--test", short, "--fraction", "1.0",
                    "--out-dir", str(tmp_path / "out")])
    message = str(err.value)
    assert "--test" in message and "test_short.jsonl" in message and "line 14" in message, message
    assert "1 token" in message and "query" in message, message


def test_corpus_lines_name_where_each_text_starts(tmp_path):
    from harness.data.text import read_corpus, read_text_file

    jsonl = _write(tmp_path / "c.jsonl", [json.dumps({"text": "one"}), "not json", "", json.dumps({"text": " "}),
                                           json.dumps({"text": "two"})])
    corpus = read_corpus(jsonl)
    assert corpus.texts == ["one", "two"] and corpus.lines == [1, 5] and corpus.where(1) == "line 5"
    txt = tmp_path / "c.txt"
    txt.write_text("first paragraph\nstill first\n\n" + "x" * 30 + "\n\n\nthird\n", encoding="utf-8")
    docs = read_text_file(txt, doc_chars=20)
    assert docs.texts == ["first paragraph\nstill first", "x" * 30, "third"] and docs.lines == [1, 4, 7]


def test_a_model_folder_without_a_tokenizer_is_named(inputs, tmp_path, no_work):
    """transformers builds an empty tokenizer for a folder of config.json alone: every text tokenizes to nothing,
    which is the model folder's fault, not the test file's."""
    import shutil

    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(Path(inputs[2]) / "config.json", folder / "config.json")
    with pytest.raises(ConfigError, match=r"--models\) = .*config_only.*no token at all.*tokenizer's files"):
        _config(inputs, model=str(folder)).check_inputs()


def test_smoke_inputs_alone_keep_the_default_models_unrefused(tmp_path):
    """--smoke-inputs without --models: the field's default is no choice of the user's, so nothing is refused."""
    import studies.lm_scaling as study

    cfg = study.parse(["--smoke-inputs", "--out-dir", str(tmp_path / "out")])
    assert cfg.models == ("0.5B",) and len(cfg.trials()) == 1


def test_a_hub_models_tokenizer_missing_on_the_driver_is_left_to_the_workers(tmp_path, monkeypatch, capsys):
    """A Qwen2.5 size label needs nothing on the driver (its LoRA share comes from built-in shapes); its tokenizer,
    when not on this machine (an offline head node), is loaded and checked on the workers instead of refused."""
    from harness.trials import lm

    def offline(name, gguf_file=None):
        raise FileNotFoundError(f"{name} is not in the local model cache")

    monkeypatch.setattr(lm, "load_tokenizer", offline)
    train = _write(tmp_path / "train.jsonl", [json.dumps({"text": f"document {i} about topic {i % 3}"})
                                              for i in range(60)])
    test = _write(tmp_path / "test.jsonl", [json.dumps({"text": f"query {i} about topic {i % 3}"}) for i in range(5)])
    lm.LMScalingTrialConfig(model="0.5B", train=train, test=test, fraction=1.0).check_inputs()
    assert "0.5B: its tokenizer is not on this machine; the test sequences are checked on the workers" in \
        capsys.readouterr().out
    lm._check_test_sample.cache_clear()
    with pytest.raises(ConfigError, match="its tokenizer cannot load"):  # a model folder must hold its tokenizer
        lm.check_test_sequences(lm.read_corpus(test), [(0, "x")], str(tmp_path), lm.LMTTTConfig())
