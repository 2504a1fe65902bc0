"""Feature path: open_clip over an ImageFolder (shapes, unit norm, cache, bad folders / files),
embedding files (row / dimension / column errors), the class-balanced hold-out, and the MLP heads."""

import dataclasses
import json
import os

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from harness.data.embeddings import load_embedding_file, load_embedding_splits
from harness.data.holdout import class_balanced_holdout
from harness.errors import ConfigError
from harness.features.cache import FeatureSplits, cached_model_features
from harness.features.clip import (
    ClipConfig,
    cached_folder_embeddings,
    encode_image_folder,
    load_clip,
)
from harness.features.embedding_source import EmbeddingSource
from harness.models.mlp import MLP_SPECS, MlpHead, head_spec
from harness.trials.embedding_head import EmbeddingHeadConfig, embedding_head_trial

CPU = ClipConfig(arch="tiny-vit-test", pretrained=None, batch_size=3, num_workers=0, device="cpu")


TINY_VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A 2-layer open_clip ViT on 32x32 images, registered as an open_clip config and built through
    `load_clip` (open_clip.create_model_and_transforms, pretrained=None: random weights)."""
    import json

    import open_clip

    path = tmp_path_factory.mktemp("open_clip_cfg") / "tiny-vit-test.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return load_clip(ClipConfig(arch="tiny-vit-test", pretrained=None))


def _image_folder(root, per_class=(3, 2), corrupt=0, size=40):
    rng = np.random.default_rng(0)
    for c, n in enumerate(per_class):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(d / f"img{i}.png")
        for i in range(corrupt):
            (d / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.mark.slow  # RN50 on 224x224 images: ~10-40 s on 2 CPU cores
def test_open_clip_rn50_embeddings_are_unit_norm(tmp_path):
    import open_clip

    model = open_clip.create_model("RN50", pretrained=None)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    out = encode_image_folder(_image_folder(tmp_path / "imgs", (2, 1)), model, preprocess, CPU)
    assert out.features.shape == (3, 1024) and out.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.labels, [0, 0, 1])
    assert out.classes == ("class0", "class1") and out.skipped == ()


def test_tiny_open_clip_shapes_and_unit_norm(tmp_path, tiny_clip):
    model, preprocess = tiny_clip
    out = encode_image_folder(_image_folder(tmp_path / "imgs", (2, 3, 1)), model, preprocess, CPU)
    assert out.features.shape == (6, 16) and out.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.labels, [0, 0, 1, 1, 1, 2])
    assert out.classes == ("class0", "class1", "class2") and out.skipped == ()


def test_tiny_clip_cache_and_corrupt_files(tmp_path, tiny_clip):
    model, preprocess = tiny_clip
    root = _image_folder(tmp_path / "imgs", (3, 2), corrupt=1)
    first = cached_folder_embeddings(root, CPU, tmp_path / "cache", model, preprocess)
    assert first.features.shape == (5, 16)
    assert len(first.skipped) == 2 and all("broken0.png" in s for s in first.skipped)  # skipped and counted
    np.testing.assert_allclose(np.linalg.norm(first.features, axis=1), 1.0, atol=1e-5)
    direct = encode_image_folder(root, model, preprocess, CPU)
    np.testing.assert_allclose(first.features, direct.features, atol=1e-6)
    again = cached_folder_embeddings(root, CPU, tmp_path / "cache", model=None, preprocess=None)  # from the cache
    assert isinstance(again.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.features), first.features)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_clip_cache_is_not_reused_after_the_images_change(tmp_path, tiny_clip):
    """An image replaced (same name) or added gives new embeddings from the cache, never the old ones."""
    model, preprocess = tiny_clip
    root = _image_folder(tmp_path / "imgs", (3, 2))
    first = cached_folder_embeddings(root, CPU, tmp_path / "cache", model, preprocess)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 47, 3), dtype=np.uint8)).save(root / "class0" / "img0.png")
    replaced = cached_folder_embeddings(root, CPU, tmp_path / "cache", model, preprocess)
    assert np.abs(replaced.features[0] - first.features[0]).max() > 1e-3  # image 0 encoded anew
    np.testing.assert_allclose(replaced.features[1:], first.features[1:], atol=1e-6)
    np.testing.assert_allclose(replaced.features, encode_image_folder(root, model, preprocess, CPU).features,
                               atol=1e-6)
    Image.fromarray(rng.integers(0, 255, (40, 47, 3), dtype=np.uint8)).save(root / "class1" / "img9.png")
    assert cached_folder_embeddings(root, CPU, tmp_path / "cache", model, preprocess).features.shape == (6, 16)


def test_a_folder_of_many_files_is_fingerprinted_by_its_listing(tmp_path, monkeypatch):
    """Above LISTING_LIMIT files a folder is one entry (no file is read), changed by a file added, resized or
    touched; below it each file's content is hashed."""
    from harness.results import provenance

    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * i)
    small = provenance.input_fingerprint([tmp_path])
    assert len(small) == 5 and all(v.startswith("sha256=") for v in small.values())
    monkeypatch.setattr(provenance, "LISTING_LIMIT", 3)
    listing = provenance.input_fingerprint([tmp_path])
    assert list(listing) == [str(tmp_path.resolve())] and listing[str(tmp_path.resolve())].startswith("files=5,")
    (tmp_path / "0.jpg").write_bytes(b"y")  # same name, new size
    resized = provenance.input_fingerprint([tmp_path])
    assert resized != listing
    stat = (tmp_path / "1.jpg").stat()
    os.utime(tmp_path / "1.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, touched
    touched = provenance.input_fingerprint([tmp_path])
    assert touched != resized
    (tmp_path / "5.jpg").write_bytes(b"z")
    assert provenance.input_fingerprint([tmp_path])[str(tmp_path.resolve())].startswith("files=6,")


def test_image_folder_errors(tmp_path, tiny_clip):
    model, preprocess = tiny_clip
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encode_image_folder(tmp_path / "missing", model, preprocess, CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        encode_image_folder(tmp_path / "empty", model, preprocess, CPU)
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images"):
        encode_image_folder(tmp_path / "no_images", model, preprocess, CPU)
    bad = tmp_path / "all_bad" / "cat"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of its 1 image files could be read"):
        encode_image_folder(tmp_path / "all_bad", model, preprocess, CPU)
    assert not (tmp_path / "cache").exists()


def test_image_folder_source_holds_out_from_train(tmp_path, tiny_clip):
    """EmbeddingSource over image folders: train minus a class-balanced hold-out (-> val), test = the other folder;
    folders with other classes are refused from their listing."""
    train = _image_folder(tmp_path / "train", (4, 4))
    test = _image_folder(tmp_path / "val", (1, 2))
    source = EmbeddingSource("image-folder", str(train), str(test), holdout=2, arch=CPU.arch, pretrained=None,
                             cache_dir=str(tmp_path / "cache"))
    s = source.load()
    assert (s.train_x.shape, s.val_x.shape, s.test_x.shape) == ((6, 16), (2, 16), (3, 16))
    np.testing.assert_array_equal(np.bincount(s.val_y), [1, 1])
    other = _image_folder(tmp_path / "other", (1, 1, 1))
    with pytest.raises(ConfigError, match="class folders of train .* and test .* differ"):
        dataclasses.replace(source, test=str(other)).load()


def test_embedding_files_load_and_refuse_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)).astype(np.float32), np.arange(12) % 3
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "train.labels.npy", y)
    gx, gy = load_embedding_file(tmp_path / "train.npy")
    np.testing.assert_array_equal(gx, x)
    assert gy.dtype == np.int64
    pl.DataFrame({"embedding": x.tolist(), "label": y}).write_parquet(tmp_path / "test.parquet")
    px, py = load_embedding_file(tmp_path / "test.parquet")
    np.testing.assert_allclose(px, x)
    np.testing.assert_array_equal(py, y)
    s = load_embedding_splits(tmp_path / "train.npy", tmp_path / "test.parquet", holdout=3)
    assert (s.train_x.shape[0], s.val_x.shape[0], s.test_x.shape[0]) == (9, 3, 12)

    np.save(tmp_path / "short.npy", x)
    np.save(tmp_path / "short.labels.npy", y[:10])
    with pytest.raises(ValueError, match="12 embedding rows but 10 labels"):
        load_embedding_file(tmp_path / "short.npy")
    np.save(tmp_path / "nolabels.npy", x)
    with pytest.raises(FileNotFoundError, match="labels file"):
        load_embedding_file(tmp_path / "nolabels.npy")
    np.save(tmp_path / "wide.npy", np.zeros((12, 6), np.float32))
    np.save(tmp_path / "wide.labels.npy", y)
    with pytest.raises(ValueError, match="dimension 6, expected 5"):
        load_embedding_splits(tmp_path / "train.npy", tmp_path / "wide.npy", holdout=3)
    pl.DataFrame({"embedding": [[1.0, 2.0], [1.0]], "label": [0, 1]}).write_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match="different dimensions"):
        load_embedding_file(tmp_path / "ragged.parquet")
    pl.DataFrame({"emb": [[1.0]], "label": [0]}).write_parquet(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['embedding'\]"):
        load_embedding_file(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="unsupported embedding file type"):
        load_embedding_file(_touch(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="needs both train and test"):
        EmbeddingSource("file", train=str(tmp_path / "train.npy"))


def _touch(path):
    path.write_text("")
    return path


def test_class_balanced_holdout_counts():
    y = np.repeat(np.arange(10), 130)
    keep, held = class_balanced_holdout(y, 50, seed=1)
    np.testing.assert_array_equal(np.bincount(y[held]), 5)
    assert keep.size == 1250 and np.intersect1d(keep, held).size == 0
    _, held = class_balanced_holdout(y, 53, seed=1)
    counts = np.bincount(y[held])
    assert counts.sum() == 53 and set(counts) == {5, 6}
    with pytest.raises(ValueError, match="holdout count must be in"):
        class_balanced_holdout(y, 1300)
    with pytest.raises(ValueError, match="fewer than"):
        class_balanced_holdout(np.array([0, 0, 0, 1]), 3)


def test_mlp_specs_match_table7_and_features_feed_the_head():
    counts = {h: head_spec(h).params() for h in MLP_SPECS}
    assert counts[250] == 379_250 and round(counts[4000], -5) == 6_100_000 and round(counts[1000], -5) == 1_500_000
    assert head_spec(4000).dropout == 0.7 and head_spec(None).lr == 1e-3
    with pytest.raises(ValueError, match="not a Table 7 size"):
        head_spec(300)
    model = MlpHead(12, 4, 250, dropout=0.5)
    x = torch.randn(9, 12)
    h = model.features(x)
    assert h.shape == (9, 250) and (h >= 0).all()
    torch.testing.assert_close(model(x), model.head(h))  # eval: dropout is the identity


def test_embedding_head_trial_rows_and_either_correct_filter():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 10)) * 2
    y = rng.integers(0, 3, 600)
    x = (centres[y] + rng.normal(size=(600, 10))).astype(np.float32)
    splits = FeatureSplits(x[:400], y[:400], x[400:450], y[400:450], x[450:], y[450:])
    cfg = EmbeddingHeadConfig(hidden=250, epochs=2, ttt_k=20, ttt_steps=10, majority_k=5, test_points=60)
    epochs: list[int] = []
    rows = embedding_head_trial(cfg, splits, on_epoch=lambda e, loss: epochs.append(e))
    assert epochs == [0, 1]
    (raw,), (wall,) = rows["phase_seconds"].unique().to_list(), rows["wall_time_s"].unique().to_list()
    phases = json.loads(raw)  # where the time went
    assert set(phases) == {"train", "features", "index", "retrieval", "ttt"} and sum(phases.values()) <= wall
    by = {(m, k): rows.filter((pl.col("method") == m) & (pl.col("metric") == k)).sort("point_id")
          for m, k in rows.select("method", "metric").unique().iter_rows()}
    assert {("global", "error"), ("ttt", "error"), ("majority", "error"), ("global", "cross_entropy"),
            ("ttt", "cross_entropy"), ("global", "cross_entropy_either_correct")} <= set(by)
    right = (by[("global", "error")]["value"].to_numpy() == 0) | (by[("ttt", "error")]["value"].to_numpy() == 0)
    sub = by[("ttt", "cross_entropy_either_correct")]
    np.testing.assert_array_equal(sub["point_id"].to_numpy(), by[("ttt", "error")]["point_id"].to_numpy()[right])
    np.testing.assert_allclose(sub["value"].to_numpy(), by[("ttt", "cross_entropy")]["value"].to_numpy()[right])
    assert set(rows["model_size"]) == {250} and by[("global", "error")].height == 60


def test_model_cache_keeps_the_head_in_the_features_file(tmp_path):
    """The head is written in one file with the features (atomically: concurrent trials of one key never leave
    one's head beside another's features); a features file without a head is recomputed; the training gets its
    checkpoint file, removed once the features are cached; non-finite features are refused, nothing written."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)).astype(np.float32), np.arange(6) % 2
    trained: list[object] = []

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, 2)
            torch.nn.init.constant_(self.head.weight, float(len(trained)))

    def train(checkpoint):
        trained.append(checkpoint)
        checkpoint.write_bytes(b"epochs so far")  # as train_classifier's checkpoint
        return Model()

    def run(scale: float = 1.0):
        seconds: dict[str, float] = {}
        out = cached_model_features(tmp_path, "k", train, lambda m: FeatureSplits(scale * x, y, x, y, x, y), seconds)
        return (*out, seconds)

    feats, w, _, seconds = run()
    assert trained == [tmp_path / "k.train.pt"] and set(seconds) == {"train", "features"} and w[0, 0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npz"]  # one file; the checkpoint removed
    again, w2, _, seconds = run()
    assert len(trained) == 1 and not seconds  # a hit: nothing trained or computed
    assert np.array_equal(w2, w) and np.array_equal(again.train_x, feats.train_x)

    feats.save(tmp_path / "k.npz")  # features without a head (as an older cache wrote them)
    _, w3, _, _ = run()
    assert len(trained) == 2 and w3[0, 0] == 2.0

    (tmp_path / "k.npz").unlink()
    with pytest.raises(ConfigError, match="NaN or inf"):
        run(np.nan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.train.pt"]  # the training's checkpoint kept
