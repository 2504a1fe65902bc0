"""Ray Data sharding on a real 2-node Ray cluster: same rows as the in-process run, actor crash
recovery, and resource requests refused before any work starts."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
import ray

from distributed_fixtures import assert_same_table, ray_cluster, tiny_trial  # noqa: F401  (pytest fixtures)
from harness.distributed.runtime import require_resources
from harness.distributed.sharding import ShardingConfig, evaluate_sharded
from harness.trials.mnist import mnist_features, mnist_trial
from harness.trials.mnist import test_subset as seeded_subset
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator
from harness.ttt.linear import HeadTTTConfig

def test_two_node_sharded_trial_equals_in_process(ray_cluster, tiny_trial, mnist):
    cfg, in_process = tiny_trial
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    rows = mnist_trial(cfg, mnist, sharding=ShardingConfig(actors=2, gpus_per_actor=1.0, batch_size=16))
    assert rows.height == 5 * 100 + 1  # 100 points x (global, ttt) x (error, CE) + majority error; dead features
    per_point = rows.filter(pl.col("metric") != "dead_features")
    assert per_point.group_by("method", "metric").len()["len"].to_list() == [100] * 5
    assert_same_table(rows, in_process)
    errors = dict(rows.filter(pl.col("metric") == "error").group_by("method").agg(pl.col("value").mean()).iter_rows())
    assert 0.0 < errors["ttt"] < errors["global"]  # a 1-epoch LeNet-280 is weak; TTT on 200 neighbours helps


def _crash_once_evaluator(marker_dir: str) -> type:
    """An evaluator that records its node and kills its own process on its 2nd batch, once per test."""

    class CrashOnceEvaluator(HeadTTTEvaluator):
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            marker = os.path.join(marker_dir, "crashed")
            if self.calls == 2 and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os._exit(1)  # the actor dies mid-shard, its batch in flight
            out = super().__call__(batch)
            out["node"] = np.full(len(out["point_id"]), ray.get_runtime_context().get_node_id())
            return out

    return CrashOnceEvaluator


def test_actor_killed_mid_shard_is_retried_every_point_once(ray_cluster, tiny_trial, mnist, tmp_path):
    cfg, in_process = tiny_trial
    cfg = cfg.resolved()
    feats, w, b = mnist_features(cfg, mnist)
    ids = seeded_subset(feats.test_x.shape[0], cfg.test_points)
    out = evaluate_sharded(
        HeadState(feats.train_x, feats.train_y, w, b), HeadTTTConfig(cfg.ttt_lr, cfg.ttt_steps, cfg.ttt_k),
        feats.test_x[ids], feats.test_y[ids], ids,
        ShardingConfig(actors=2, gpus_per_actor=1.0, batch_size=10, max_restarts=2, max_task_retries=2),
        majority_k=cfg.majority_k, evaluator_cls=_crash_once_evaluator(str(tmp_path)),
    )
    assert (tmp_path / "crashed").exists()  # an actor really died
    np.testing.assert_array_equal(out["point_id"], ids)  # every point exactly once, sorted
    assert len(set(out["node"].tolist())) == 2  # the shards ran on both nodes
    ref = in_process.filter((pl.col("method") == "ttt") & (pl.col("metric") == "error")).sort("point_id")
    np.testing.assert_array_equal((out["pred_ttt"] != out["label"]).astype(float), ref["value"].to_numpy())


def test_gpu_request_the_cluster_cannot_meet_fails_before_work(ray_cluster, capsys):
    with pytest.raises(ValueError, match=r"gpus_per_actor = 2.0 but no node .* has that many GPUs \(largest: 1\)"):
        require_resources(2.0, 1.0)
    assert require_resources(2.0, 1.0, on_missing_gpu="cpu") == 0.0
    assert "falling back to CPU actors" in capsys.readouterr().err
    assert require_resources(0.5, 1.0) == 0.5
    with pytest.raises(ValueError, match="cpus_per_actor = 4 but the largest node of this Ray cluster has 1 CPUs"):
        require_resources(0.0, 4)


def test_sharding_config_names_bad_fields():
    with pytest.raises(ValueError, match="ShardingConfig.actors must be >= 1, got 0"):
        ShardingConfig(actors=0)
    with pytest.raises(ValueError, match="ShardingConfig.gpus_per_actor must be >= 0"):
        ShardingConfig(gpus_per_actor=-0.5)
    with pytest.raises(ValueError, match="on_missing_gpu must be 'error' or 'cpu'"):
        ShardingConfig(on_missing_gpu="maybe")
