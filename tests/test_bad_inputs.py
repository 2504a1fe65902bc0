"""Bad input, one table (issue 17): every row sets up small data, runs the thing, and must be refused (or, for the
skip-and-count rows, accepted with a printed count) before any work, with a message naming the field, option or file.

For every row the harness asserts:
  (a) the error text (with what was printed) matches the row's regex, which names the field, option or file;
  (b) it came before work: no Ray started (`ray.is_initialized()` unchanged, no new Ray session folder of this
      process, `ray.init` never called) and none of the work callables ran (model training, text embedding, LM
      loading; a row adds its own in `work`): each is replaced by a spy that raises `WorkStarted`;
  (c) the row's output folder (`out`, under tmp_path) holds no file: no partial result, no cached copy.

To add a row: write `def _my_case(tmp: Path) -> object` that builds its inputs under `tmp` (outputs under
`tmp / "out"`) and runs the study, trial or loader; append `Case("my-id", _my_case, ConfigError, r"--option ...")`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import struct
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from harness.data.text import CorruptLineError
from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class WorkStarted(BaseException):  # noqa: N818  a BaseException: no `except Exception` in the code swallows it
    """Raised by a spy: the row reached work it should have been refused before."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: `run(tmp)` sets up small data under tmp and runs the thing (outputs under tmp / out)."""

    id: str
    run: Callable[[Path], object]
    error: type[BaseException] | None  # None: accepted (a skip-and-count row); `match` is then looked for in stdout
    match: str | None  # regex the error text (and what was printed) must match: it names the field, option or file
    work: tuple[str, ...] = ()  # further "module.attribute" callables that mean work started (spied on)
    out: str = "out"  # the output folder under tmp that must hold no file afterwards


# Work no row may reach; the rows add their own in `work`.
WORK = (
    "ray.init",
    "harness.trials.mnist.train_classifier",  # the LeNet's global training
    "harness.trials.embedding_head.train_classifier",  # the MLP head's global training
    "harness.trials.lm.embed_texts_sharded",  # S3: the train corpus embedded on the actor pool
    "harness.trials.lm.evaluate_lm_sharded",  # S3: LoRA TTT on the actor pool
    "harness.features.text_embedder.SentenceEmbedder.__init__",  # any text embedder loaded
    "harness.models.lm.load_causal_lm",  # any LM loaded
)


# ---------------------------------------------------------------- inputs
def _write_idx(path: Path, array: np.ndarray, dims: tuple[int, ...] | None = None) -> Path:
    """An idx file of `array` (uint8); `dims` overrides the header's shape; gzipped when the name ends in .gz."""
    dims = array.shape if dims is None else dims
    data = struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _idx_folder(tmp: Path) -> Path:
    """Valid MNIST idx files: 10,001 train images (one left after the 10k validation hold-out), 7 test ones."""
    folder = tmp / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((10_001, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, 10_001))
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 7))
    return folder


def _s1(tmp: Path, *args: str) -> object:
    import studies.model_scaling as study

    return study.main([*args, "--out-dir", str(tmp / "out")])


def _s5(tmp: Path, *args: str) -> object:
    import studies.neighbourhood_size as study

    return study.main([*args, "--out-dir", str(tmp / "out")])


def _s1_unwritable_out(tmp: Path) -> object:
    import studies.model_scaling as study

    (tmp / "blocker").write_text("a file where the out-dir's parent folder should be")
    return study.main(["--sizes", "280", "--out-dir", str(tmp / "blocker" / "out")])


def _s1_on_idx(tmp: Path, break_files: Callable[[Path], object]) -> object:
    folder = _idx_folder(tmp)
    break_files(folder)
    return _s1(tmp, "--data-dir", str(folder), "--sizes", "280")


def _embedding_files(tmp: Path, train: np.ndarray | None = None, test: np.ndarray | None = None) -> tuple[Path, Path]:
    """train.npy / test.npy (+ labels beside them) under tmp/in: 12 x 5 normal floats unless given."""
    folder = tmp / "in"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, x in (("train", train), ("test", test)):
        x = rng.normal(size=(12, 5)).astype(np.float32) if x is None else x
        np.save(folder / f"{name}.npy", x, allow_pickle=x.dtype == object)
        np.save(folder / f"{name}.labels.npy", np.arange(len(x)) % 3)
        paths.append(folder / f"{name}.npy")
    return paths[0], paths[1]


def _load_embeddings(tmp: Path, train: np.ndarray | None = None, test: np.ndarray | None = None) -> object:
    from harness.features.embedding_source import EmbeddingSource

    train_path, test_path = _embedding_files(tmp, train, test)
    return EmbeddingSource("file", train=str(train_path), test=str(test_path), holdout=3).load()


def _nan_rows() -> np.ndarray:
    x = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    x[3, 1], x[7, 4] = np.nan, np.inf
    return x


def _feature_splits(bad_split: str | None = None):
    from harness.features.cache import FeatureSplits

    rng = np.random.default_rng(0)
    parts = {s: rng.normal(size=(4, 3)).astype(np.float32) for s in ("train", "val", "test")}
    if bad_split is not None:
        parts[bad_split][2, 0] = np.nan
    y = np.arange(4)
    return FeatureSplits(parts["train"], y, parts["val"], y, parts["test"], y)


def _cluster_yaml(tmp: Path, **changes: object) -> Path:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["file_mounts"] = {remote: str(ROOT) for remote in config["file_mounts"]}  # "." is the checkout
    config.update(changes)
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _check_cluster(tmp: Path, **changes: object) -> object:
    from harness.distributed.cluster import check_cluster_yaml

    return check_cluster_yaml(_cluster_yaml(tmp, **changes))


def _jsonl(path: Path, lines: list[str | None]) -> Path:
    """A Pile-format JSONL file: a string is a record's text, None a corrupt (cut-off) line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps({"text": t}) if t is not None else '{"text": "cut off') + "\n"
                            for t in lines), encoding="utf-8")
    return path


def _topical(n: int) -> list[str]:
    from harness.data.text import topical_corpus

    return topical_corpus(n, words_per_doc=20, seed=0)[0]


def _model_folder(tmp: Path) -> str:
    """A folder with a tiny Qwen2's config.json only (no weights): it passes the model checks (the LoRA targets are
    checked against its config), and nothing may load it before the refusal."""
    from transformers import Qwen2Config

    folder = tmp / "model"
    folder.mkdir(exist_ok=True)
    Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=32).to_json_file(str(folder / "config.json"))
    return str(folder)


def _empty_folder(tmp: Path) -> Path:
    folder = tmp / "encoder"
    folder.mkdir(exist_ok=True)
    return folder


def _s3_config(tmp: Path, train: list[str | None], test: list[str | None]):
    from harness.trials.lm import LMScalingTrialConfig

    return LMScalingTrialConfig(model=_model_folder(tmp), train=str(_jsonl(tmp / "in" / "train.jsonl", train)),
                                test=str(_jsonl(tmp / "in" / "test.jsonl", test)), fraction=1.0, actors=1,
                                cache_dir=str(tmp / "out"))


def _s3_study(tmp: Path, *args: str) -> object:
    import studies.lm_scaling as study

    train, test = _jsonl(tmp / "in" / "train.jsonl", _topical(8)), _jsonl(tmp / "in" / "test.jsonl", _topical(3))
    return study.main(["--train", str(train), "--test", str(test), *args, "--out-dir", str(tmp / "out")])


def _s3_trial(tmp: Path, train: list[str | None], test: list[str | None]) -> object:
    from harness.trials.lm import lm_scaling_trial

    return lm_scaling_trial(_s3_config(tmp, train, test))


def _s3_blank_test_text_skipped(tmp: Path) -> None:
    """The trial's Ray parts replaced by fakes: the blank text is never sampled, its count lands in the hparams."""
    import harness.trials.lm as lm
    from harness.models.tiny_qwen2 import make_tiny_qwen2
    from harness.ttt.lora_config import LMTTTConfig

    train, test = _topical(6), ["alpha beta gamma", "one two three", "   \t ", "four five six"]
    model = make_tiny_qwen2(tmp / "tiny", [t for t in train + test if t and t.strip()])  # a tokenizer: the check splits
    cfg = dataclasses.replace(_s3_config(tmp, train, test), model=str(model), ttt=LMTTTConfig(num_neighbours=2))
    cfg.check_inputs()  # the study's check before Ray: prints the count
    seen: list[list[int]] = []

    def evaluate(points, spec, ttt, index, sharding):
        seen.append([p for p, _ in points])
        n = len(points)
        return {"point_id": np.array([p for p, _ in points]), "bpb_global": np.full(n, 2.0),
                "bpb_ttt": np.full(n, 1.5), "n_params": np.full(n, 1000), "lora_params": np.full(n, 10),
                "n_bytes": np.full(n, 12), "n_neighbours": np.full(n, 2), "device": np.array(["cpu"] * n)}

    index = types.SimpleNamespace(info={"train_skipped_lines": 0, "train_blank_texts": 0}, embedder="fake")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm, "corpus_index", lambda cfg, sharding: index)
        mp.setattr(lm, "evaluate_lm_sharded", evaluate)
        rows = lm.lm_scaling_trial(cfg)
    assert seen == [[0, 1, 2]]  # three usable texts; the blank one (line 3) never reaches the engine
    data = rows["hparams"].map_elements(lambda h: json.loads(h)["data"]["test_blank_texts"], return_dtype=pl.Int64)
    assert set(data) == {1} and rows.height == 12  # 3 sequences x {global, ttt} x {bits_per_byte, utf8_bytes}


def _demo(tmp: Path, *args: str) -> object:
    """studies/lm_demo.py with its temporary model folder under tmp/out (which must be gone afterwards)."""
    import studies.lm_demo as demo

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str((tmp / "out")))
        (tmp / "out").mkdir(exist_ok=True)
        return demo.main(list(args))


def _demo_split(tmp: Path, lines: list[str | None], sequences: int = 2) -> None:
    """The demo's corpus split (what it scores and what it retrieves from): no blank text in either."""
    from studies.lm_demo import LMDemo, demo_split

    points, train = demo_split(LMDemo(corpus=str(_jsonl(tmp / "in" / "corpus.jsonl", lines)), sequences=sequences))
    usable = [t for t in lines if t is not None and t.strip()]
    assert sorted([t for _, t in points] + train) == sorted(usable)


def _read_corrupt_jsonl(tmp: Path, on_error: str) -> None:
    from harness.data.text import read_jsonl, skipped_summary

    corpus = read_jsonl(_jsonl(tmp / "in" / "a.jsonl", ["alpha beta", None, "gamma", "", None]), on_error=on_error)
    assert corpus.texts == ["alpha beta", "gamma"] and corpus.skipped_lines == [2, 5] and corpus.blank_lines == [4]
    print(skipped_summary(corpus))


def _offline(run: Callable[[], object]) -> object:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return run()


def _cached_features_nonfinite(tmp: Path) -> object:
    from harness.features.cache import cached_features

    return cached_features(tmp / "out", "lenet-280-abc", lambda: _feature_splits("val"))


def _poisoned_cache_recomputed(tmp: Path) -> None:
    """A cached copy holding NaN (written before the check existed) is recomputed from the fixed input."""
    from harness.features.cache import cached_features

    out = tmp / "out"
    out.mkdir()
    np.savez(out / "k.npz", **dataclasses.asdict(_feature_splits("train")))  # the old, poisoned copy
    fixed = _feature_splits()
    got = cached_features(out, "k", lambda: fixed)
    np.testing.assert_array_equal(got.train_x, fixed.train_x)
    (out / "k.npz").unlink()  # now finite; removed so the harness's empty-folder check applies to the rest


def _s4_trial_nan(tmp: Path) -> object:
    from harness.features.embedding_source import EmbeddingSource
    from harness.trials.embedding_head import EmbeddingHeadConfig, embedding_head_trial

    train, test = _embedding_files(tmp, train=_nan_rows())
    cfg = EmbeddingHeadConfig(source=EmbeddingSource("file", train=str(train), test=str(test), holdout=3),
                              hidden=None, ttt_k=2, majority_k=2, cache_dir=str(tmp / "out"))
    return embedding_head_trial(cfg)


def _cluster_cli(tmp: Path) -> None:
    from harness.distributed.cluster import main

    assert main(["check", str(_cluster_yaml(tmp, provider="aws", file_mounts=["/srv/x"]))]) == 1


def _six_bytes(folder: Path) -> None:
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00")


def _truncated_gz(folder: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28))
    path = _write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    (folder / "t10k-images-idx3-ubyte").unlink()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _length_mismatch(folder: Path) -> None:
    _write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((6, 28, 28)), dims=(5, 28, 28))


def _bad_magic(folder: Path) -> None:
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 not idx")


BLANK_CORRUPT = ["alpha beta", None, "   ", "gamma delta", None, "epsilon", "", "zeta eta", "theta"]
TRAIN_ONLY_BLANK: list[str | None] = ["", "  \n ", None]

CASES = [
    # ---- what already worked, kept tested
    Case("s1-unknown-lenet-size", lambda t: _s1(t, "--sizes", "123"), ConfigError,
         r"model_size 123 is not a LeNet size .* choose from \[280, 600"),
    Case("s1-unknown-engine-option", lambda t: _s1(t, "--engine", "nope"), SystemExit,
         r"invalid choice 'nope' for argument '--engine'"),
    # the study rows: refused before training (and before Ray starts), naming the field or option
    Case("s1-k-larger-than-training-set", lambda t: _s1(t, "--sizes", "280", "--fraction", "0.0005"), ConfigError,
         r"ttt_k = 200 \(Table 4-5's value for LeNet-280\) is larger than the training set: .* holds 20 points"),
    Case("s5-ks-larger-than-training-set", lambda t: _s5(t, "--ks", "60000"), ConfigError,
         r"ttt_k = 60000 is larger than the training set: .*50000 training embeddings"),
    Case("s1-test-points-beyond-the-test-set", lambda t: _s1(t, "--sizes", "280", "--test-points", "20000"),
         ConfigError, r"test_points = 20000 exceeds the 10000 points of the test split"),
    Case("s1-negative-seed", lambda t: _s1(t, "--seeds", "-1"), ConfigError, r"seed must be >= 0, got -1"),
    Case("s1-epochs-zero", lambda t: _s1(t, "--epochs", "0"), ConfigError, r"--epochs 0 leaves the global model untrained"),
    Case("s1-fused-engine-on-cpu", lambda t: _s1(t, "--sizes", "280", "--engine", "fused-fp16-state", "--device", "cpu"),
         ConfigError, r"engine 'fused-fp16-state' is a Triton GPU engine, but the TTT computes on the CPU .*--engine"),
    Case("s1-device-typo", lambda t: _s1(t, "--device", "gpu"), SystemExit, r"invalid choice 'gpu' for argument '--device'"),
    Case("s1-gpus-per-actor-without-actors", lambda t: _s1(t, "--gpus-per-actor", "1"), SystemExit,
         r"--gpus-per-actor 1.0 needs --actors"),
    Case("s1-out-dir-not-writable", lambda t: _s1_unwritable_out(t), ConfigError, r"--out-dir .*blocker/out: cannot write"),
    Case("mnist-unknown-engine", lambda t: _mnist_config(engine="nope"), ConfigError,
         r"engine must be one of \['auto', 'exact', .*got 'nope'"),
    Case("mnist-fraction-zero", lambda t: _mnist_config(fraction=0), ConfigError, r"fraction must be in \(0, 1\], got 0"),
    Case("idx-bad-magic", lambda t: _s1_on_idx(t, _bad_magic), ConfigError,
         r"t10k-labels-idx1-ubyte: not an unsigned-byte idx file \(magic '504b0304'\)"),
    Case("idx-length-mismatch", lambda t: _s1_on_idx(t, _length_mismatch), ConfigError,
         r"t10k-images-idx3-ubyte: header says shape \(5, 28, 28\): expected 3920 bytes, got 4704\n"),
    Case("embeddings-dimension-mismatch", lambda t: _load_embeddings(t, test=np.zeros((12, 6), np.float32)),
         ConfigError, r"test\.npy: embeddings have dimension 6, expected 5"),
    Case("cluster-unknown-key", lambda t: _check_cluster(t, bogus_key=1), ValueError,
         r"cluster\.yaml: 1 problem.*Additional properties are not allowed \('bogus_key' was unexpected\)"),
    Case("jsonl-corrupt-lines-counted", lambda t: _read_corrupt_jsonl(t, "skip"), None,
         r"skipped 2 corrupt lines \(lines 2, 5\) and 1 blank text \(line 4\)"),
    Case("jsonl-corrupt-line-raises", lambda t: _read_corrupt_jsonl(t, "raise"), CorruptLineError,
         r"a\.jsonl: line 2 is not a Pile JSON record"),
    # ---- MNIST idx files
    Case("idx-truncated-gz", lambda t: _s1_on_idx(t, _truncated_gz), ConfigError,
         r"t10k-images-idx3-ubyte\.gz: header says shape \(50, 28, 28\): expected 39200 bytes, got \d+ "
         r"\(truncated: the gzip stream ends early\)"),
    Case("idx-six-bytes", lambda t: _s1_on_idx(t, _six_bytes), ConfigError,
         r"t10k-labels-idx1-ubyte: header too short: the magic announces 1 dimension\(s\), so 8 header bytes, "
         r"but the file holds 6 byte\(s\)"),
    # ---- embedding files and the feature cache
    Case("embeddings-nan-inf-rows", lambda t: _load_embeddings(t, train=_nan_rows()), ConfigError,
         r"train\.npy: 2 row\(s\) \(rows 3, 7\) of 12 hold NaN or inf"),
    Case("embeddings-parquet-nan-rows", lambda t: _parquet_nan(t), ConfigError,
         r"train\.parquet: 1 row\(s\) \(rows 1\) of 3 hold NaN or inf"),
    Case("embeddings-empty-npy", lambda t: _load_embeddings(t, train=np.zeros((0, 5), np.float32)), ConfigError,
         r"train\.npy: holds no rows \(shape \(0, 5\), dtype float32\)"),
    Case("embeddings-zero-byte-npy", lambda t: _zero_byte_npy(t), ConfigError,
         r"train\.npy: not a readable \.npy file"),
    Case("embeddings-strings", lambda t: _load_embeddings(t, train=np.array([["a", "b"]] * 12)), ConfigError,
         r"train\.npy: embeddings must be real numbers .*got dtype <U1"),
    Case("embeddings-objects", lambda t: _load_embeddings(t, train=np.array([[1.0, None]] * 12, dtype=object)),
         ConfigError, r"train\.npy: embeddings must be real numbers .*got dtype object"),
    Case("embeddings-complex", lambda t: _load_embeddings(t, test=np.ones((12, 5)) + 1j), ConfigError,
         r"test\.npy: embeddings must be real numbers .*got dtype complex128 \(complex: the imaginary part"),
    Case("embeddings-string-labels", lambda t: _string_labels(t), ConfigError,
         r"train\.labels\.npy: labels must be real numbers .*got dtype <U1"),
    Case("s4-trial-nan-embeddings-nothing-cached", _s4_trial_nan, ConfigError, r"train\.npy: 2 row\(s\) \(rows 3, 7\)"),
    Case("feature-cache-refuses-nonfinite", _cached_features_nonfinite, ConfigError,
         r"features lenet-280-abc \(cache .*lenet-280-abc\.npz\): non-finite features .* in val split: 1 row\(s\) "
         r"\(rows 2\)"),
    Case("feature-splits-save-refuses-nonfinite", lambda t: _feature_splits("test").save(t / "out" / "f.npz"),
         ConfigError, r"out/f\.npz: non-finite features .* in test split"),
    Case("feature-cache-poisoned-copy-recomputed", _poisoned_cache_recomputed, None, None),
    # ---- the cluster checker: sections of the wrong type
    Case("cluster-provider-string", lambda t: _check_cluster(t, provider="aws"), ValueError,
         r"cluster\.yaml: .*provider must be a mapping .*got str 'aws'"),
    Case("cluster-file-mounts-list", lambda t: _check_cluster(t, file_mounts=["/srv/x"]), ValueError,
         r"file_mounts must be a mapping of remote path: local path, got list \['/srv/x'\]"),
    Case("cluster-setup-commands-string", lambda t: _check_cluster(t, setup_commands="pip install -e ."), ValueError,
         r"setup_commands must be a list of shell commands, got str 'pip install -e \.'"),
    Case("cluster-node-type-string", lambda t: _check_cluster(t, available_node_types={"head.cpu": "m5.large"}),
         ValueError, r"available_node_types\.head\.cpu must be a mapping \(node_config, min_workers, max_workers\)"),
    Case("cluster-cli-names-key-without-traceback", _cluster_cli, None,
         r"provider must be a mapping .*got str 'aws'[\s\S]*file_mounts must be a mapping"),
    # ---- S3 and the LM demo
    Case("s3-unknown-model", lambda t: _s3_study(t, "--models", "no_such_model"), ConfigError,
         r"LMScalingTrialConfig\.model \(--models\) = 'no_such_model' cannot load: no folder .*no_such_model exists"),
    Case("s3-uncached-hub-model-offline",
         lambda t: _offline(lambda: _s3_study(t, "--models", "nobody-xyz/no-such-model")), ConfigError,
         r"model \(--models\) = 'nobody-xyz/no-such-model' cannot load: HF_HUB_OFFLINE is set"),
    Case("s3-unknown-lora-target", lambda t: _s3_study(t, "--target-modules", "q_prj", "v_proj"), ConfigError,
         r"LMTTTConfig\.target_modules \(--target-modules\) = \('q_prj', 'v_proj'\) for '0\.5B': the model has no "
         r"linear layer named 'q_prj' \(did you mean 'q_proj'\?\)"),
    Case("s3-lora-target-not-in-model-folder",
         lambda t: _s3_study(t, "--models", _model_folder(t), "--target-modules", "c_attn"), ConfigError,
         r"LMTTTConfig\.target_modules .*\('c_attn',\) for .*model': the model has no linear layer named 'c_attn'; "
         r"its linear layers are down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    Case("s3-embedder-missing-folder", lambda t: _s3_study(t, "--embedder", str(t / "no_such_encoder")), ConfigError,
         r"LMScalingTrialConfig\.embedder \(--embedder\) = '.*no_such_encoder' cannot load: no folder"),
    Case("s3-embedder-folder-without-config", lambda t: _s3_study(t, "--embedder", str(_empty_folder(t))),
         ConfigError, r"LMScalingTrialConfig\.embedder \(--embedder\) = '.*encoder' cannot load: the folder .* "
         r"holds no config\.json"),
    Case("s3-uncached-hub-embedder-offline",
         lambda t: _offline(lambda: _s3_study(t, "--embedder", "nobody-xyz/no-such-encoder")), ConfigError,
         r"embedder \(--embedder\) = 'nobody-xyz/no-such-encoder' cannot load: HF_HUB_OFFLINE is set"),
    Case("s3-empty-test-corpus", lambda t: _s3_config(t, _topical(4), TRAIN_ONLY_BLANK).check_inputs(), ConfigError,
         r"LMScalingTrialConfig\.test \(--test\) .*test\.jsonl: no usable text \(skipped 1 corrupt line \(line 3\) "
         r"and 2 blank texts \(lines 1, 2\)\)"),
    Case("s3-empty-test-corpus-trial", lambda t: _s3_trial(t, _topical(4), []), ConfigError,
         r"LMScalingTrialConfig\.test \(--test\) .*test\.jsonl: no usable text \(it holds no text\)"),
    Case("s3-empty-train-corpus", lambda t: _s3_config(t, TRAIN_ONLY_BLANK, _topical(2)).check_inputs(), ConfigError,
         r"LMScalingTrialConfig\.train \(--train\) .*train\.jsonl: no usable text"),
    Case("s3-empty-train-corpus-trial", lambda t: _s3_trial(t, [], _topical(2)), ConfigError,
         r"LMScalingTrialConfig\.train \(--train\) .*train\.jsonl: no usable text \(it holds no text\)"),
    Case("s3-blank-test-text-skipped-and-counted", _s3_blank_test_text_skipped, None,
         r"test corpus .*test\.jsonl: skipped 1 blank text \(line 3\); 3 test sequences left"),
    Case("demo-blank-and-corrupt-lines-skipped-and-counted", lambda t: _demo_split(t, BLANK_CORRUPT), None,
         r"--corpus .*corpus\.jsonl: skipped 2 corrupt lines \(lines 2, 5\) and 2 blank texts \(lines 3, 7\); "
         r"5 texts left"),
    Case("demo-empty-corpus", lambda t: _demo(t, "--corpus", str(_jsonl(t / "in" / "c.jsonl", TRAIN_ONLY_BLANK))),
         ConfigError, r"--corpus .*c\.jsonl: no usable text", work=("studies.lm_demo.make_tiny_qwen2",)),
    Case("demo-fewer-texts-than-sequences",
         lambda t: _demo(t, "--corpus", str(_jsonl(t / "in" / "c.jsonl", _topical(3))), "--sequences", "3"),
         ConfigError, r"--sequences 3: --corpus .*c\.jsonl holds 3 usable texts",
         work=("studies.lm_demo.make_tiny_qwen2",)),
    Case("demo-sequences-zero", lambda t: _demo(t, "--sequences", "0"), SystemExit, r"--sequences must be >= 1, got 0",
         work=("studies.lm_demo.make_tiny_qwen2",)),
    Case("demo-bad-lr-before-the-model", lambda t: _demo(t, "--lr", "-1"), ConfigError,
         r"LMTTTConfig\.lr = -1\.0 must be > 0", work=("studies.lm_demo.make_tiny_qwen2",)),
]


def _mnist_config(**fields: object) -> object:
    from harness.trials.mnist import MnistTrialConfig

    return MnistTrialConfig(model_size=280, **fields)


def _parquet_nan(tmp: Path) -> object:
    from harness.data.embeddings import load_embedding_file

    (tmp / "in").mkdir()
    path = tmp / "in" / "train.parquet"
    pl.DataFrame({"embedding": [[1.0, 2.0], [float("nan"), 1.0], [0.0, 1.0]], "label": [0, 1, 0]}).write_parquet(path)
    return load_embedding_file(path)


def _zero_byte_npy(tmp: Path) -> object:
    train, _ = _embedding_files(tmp)
    train.write_bytes(b"")
    return _load_embeddings_again(train)


def _string_labels(tmp: Path) -> object:
    train, _ = _embedding_files(tmp)
    np.save(train.with_name("train.labels.npy"), np.array(["a"] * 12))
    return _load_embeddings_again(train)


def _load_embeddings_again(train: Path) -> object:
    from harness.features.embedding_source import EmbeddingSource

    return EmbeddingSource("file", train=str(train), test=str(train.with_name("test.npy")), holdout=3).load()


def _ray_sessions() -> set[str]:
    """Ray session folders started by this process (their names end in the driver's pid)."""
    root = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
    return {p.name for p in root.glob(f"session_*_{os.getpid()}")}


def _spy(target: str) -> Callable[..., None]:
    def started(*args: object, **kwargs: object) -> None:
        raise WorkStarted(f"{target} was called: the bad input reached work")

    return started


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import ray

    for target in (*WORK, *case.work):
        monkeypatch.setattr(target, _spy(target))
    ray_before, sessions_before = ray.is_initialized(), _ray_sessions()
    if case.error is None:
        case.run(tmp_path)
        printed = capsys.readouterr()
        text = f"{printed.out}\n{printed.err}"
    else:
        with pytest.raises(case.error) as err:
            case.run(tmp_path)
        printed = capsys.readouterr()
        text = f"{err.value}\n{printed.out}\n{printed.err}"
    if case.match is not None:  # (a) the message names the field, option or file
        assert re.search(case.match, text, flags=re.DOTALL), text
    assert ray.is_initialized() == ray_before and _ray_sessions() == sessions_before  # (b) no Ray started
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / case.out).rglob("*") if p.is_file())
    assert left == [], left  # (c) no partial or cached file


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
