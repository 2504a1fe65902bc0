"""S7 (Table 2): neighbourhood accuracy is each head's accuracy on its own k neighbours; global-TTT
accuracy is a chosen head's accuracy on the whole test split."""

import json

import numpy as np
import polars as pl
import torch

from harness.retrieval import build_retriever, retrieve_neighbours
from harness.trials.local_vs_global import LocalVsGlobalConfig, local_vs_global_trial
from harness.trials.mnist import mnist_features
from harness.trials.mnist import test_subset as fixed_test_points
from harness.ttt.linear import HeadTTTConfig, head_ttt_one_point
from harness.ttt.local import heads_accuracy


def test_heads_accuracy_counts_per_head():
    W = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # head 1 swaps the classes
    c = torch.zeros(2, 2)
    feats = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]]]).expand(2, 3, 2)
    labels = torch.tensor([[0, 1, 1]]).expand(2, 3)
    torch.testing.assert_close(heads_accuracy(W, c, feats, labels), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_table2_columns_recomputed_one_point_at_a_time(mnist, tmp_path):
    cfg = LocalVsGlobalConfig(model_size=280, epochs=0, test_points=12, ttt_steps=15, ttt_k=40, ttt_lr=0.05,
                              global_heads=3, chunk=5, cache_dir=str(tmp_path))
    rows = local_vs_global_trial(cfg, mnist)
    ttt_hparams = rows.filter(pl.col("method") == "ttt")["hparams"].unique().to_list()
    assert [json.loads(h)["engine"] for h in ttt_hparams] == ["exact"]  # engine auto ran exact on the CPU
    feats, W, c = mnist_features(cfg.model_config(), mnist)
    subset = fixed_test_points(10_000, 12)
    nb = retrieve_neighbours(build_retriever(feats.train_x), feats.test_x[subset], 40)
    ttt = HeadTTTConfig(lr=0.05, steps=15, k=40)
    W0, c0 = torch.from_numpy(W), torch.from_numpy(c)
    by = {m: rows.filter(pl.col("metric") == m).sort("point_id") for m in
          ("accuracy", "accuracy_neighbourhood", "accuracy_test_set")}
    nbhd = by["accuracy_neighbourhood"]["value"].to_numpy()
    assert nbhd.shape == (12,)
    for i in (0, 7, 11):
        X, Y = torch.from_numpy(feats.train_x[nb[i]]), torch.from_numpy(feats.train_y[nb[i]])
        _, Wi, ci = head_ttt_one_point(W0, c0, X, Y, torch.from_numpy(feats.test_x[subset[i]]), ttt)
        expected = ((X @ Wi.T + ci).argmax(1) == Y).double().mean().item()
        assert abs(nbhd[i] - expected) < 1e-12
    heads = by["accuracy_test_set"]
    assert heads.height == 3 and set(heads["point_id"]) <= set(subset.tolist())
    pid = int(heads["point_id"][0])
    i = int(np.flatnonzero(subset == pid)[0])
    X, Y = torch.from_numpy(feats.train_x[nb[i]]), torch.from_numpy(feats.train_y[nb[i]])
    _, Wi, ci = head_ttt_one_point(W0, c0, X, Y, torch.from_numpy(feats.test_x[pid]), ttt)
    whole = ((torch.from_numpy(feats.test_x) @ Wi.T + ci).argmax(1) == torch.from_numpy(feats.test_y)).double().mean()
    assert abs(heads["value"][0] - whole.item()) < 1e-9
    glob = rows.filter((pl.col("method") == "global") & (pl.col("metric") == "accuracy")).sort("point_id")
    pred = (feats.test_x[subset] @ W.T + c).argmax(1)
    np.testing.assert_array_equal(glob["value"].to_numpy(), (pred == feats.test_y[subset]).astype(float))


def test_trial_says_where_its_time_went_and_follows_training(mnist, tmp_path):
    cfg = LocalVsGlobalConfig(model_size=280, epochs=2, test_points=8, ttt_steps=5, ttt_k=20, global_heads=2,
                              cache_dir=str(tmp_path))
    epochs: list[tuple[int, float]] = []
    rows = local_vs_global_trial(cfg, mnist, on_epoch=lambda e, loss: epochs.append((e, loss)))
    assert [e for e, _ in epochs] == [0, 1] and all(np.isfinite(loss) and loss > 0 for _, loss in epochs)
    (raw,), (wall,) = rows["phase_seconds"].unique().to_list(), rows["wall_time_s"].unique().to_list()
    phases = json.loads(raw)
    assert set(phases) == {"train", "features", "index", "retrieval", "to_device", "ttt",
                           "global_heads"}
    assert all(s >= 0 for s in phases.values()) and sum(phases.values()) <= wall
    again = local_vs_global_trial(cfg, mnist, on_epoch=lambda e, loss: epochs.append((e, loss)))
    assert len(epochs) == 2  # the features came from the cache: no training, so no training phase either
    assert set(json.loads(again["phase_seconds"][0])) == {"index", "retrieval", "to_device", "ttt", "global_heads"}
