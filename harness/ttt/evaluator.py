"""The per-replica TTT evaluator: holds an index replica, the training features and the global head,
and turns a batch of test points into per-point predictions of global, TTT and majority vote.

It is a callable class in the shape Ray Data's `map_batches` wants (load once in `__init__`,
work in `__call__`), and the in-process path calls it the same way.

A diverged TTT run (a finite learning rate too large for the features: Adam's steps overflow float32, or a
fused engine's half-precision state) leaves NaN or infinite logits. They are no prediction: torch's argmax
returns the index of a row's first NaN (class 0 when all are NaN), which would count every class-0 point as
correct, and their cross-entropy is NaN. So the evaluator predicts -1 (no class) for such a point, and
`prediction_metrics`, on the trial's side of the actor pool, ends the trial with a DivergedError (a ConfigError)
that says TTT diverged, for how many points, with which learning rate, and to lower --ttt-lr; see its docstring
for why.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from harness.devices import trial_device
from harness.errors import DivergedError
from harness.retrieval.index import build_retriever, check_features
from harness.ttt.baselines import majority_vote
from harness.ttt.head_engines import AUTO, HEAD_TTT_ENGINES, resolve_head_engine
from harness.ttt.linear import HeadTTTConfig


@dataclasses.dataclass(frozen=True)
class HeadState:
    """What every replica needs: training features (N, d), labels (N,), global head W (C, d), c (C,)."""

    train_features: np.ndarray
    train_labels: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        n, d = check_features("training features", self.train_features).shape
        if self.train_labels.shape != (n,):
            raise ValueError(f"training labels have shape {self.train_labels.shape}, expected ({n},)")
        if self.weight.ndim != 2 or self.weight.shape[1] != d:
            raise ValueError(f"head weight has shape {self.weight.shape}, expected (C, {d}) "
                             f"for features of dimension {d}")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"head bias has shape {self.bias.shape}, expected ({self.weight.shape[0]},)")
        for name, value in (("head weight", self.weight), ("head bias", self.bias)):
            if not np.isfinite(value).all():
                raise ValueError(f"{name} holds NaN or infinite values (a diverged global training run?)")
        if self.train_labels.min() < 0 or self.train_labels.max() >= self.weight.shape[0]:
            classes = self.weight.shape[0]
            raise ValueError(f"training labels must lie in [0, {classes}) for a head of {classes} classes")


CPU_CHUNK_FLOATS = 2**21  # 8 MB of neighbour features per TTT chunk on a CPU: it stays in cache across the steps
GPU_CHUNK = 256  # test points per TTT chunk on a GPU


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, C) -> (B,) int64: each row's argmax, or -1 (no prediction) where the row holds a NaN or inf
    (torch's argmax would return the first NaN's index: a class the model never predicted)."""
    return torch.where(torch.isfinite(logits).all(dim=1), logits.argmax(dim=1), -1)


def check_predictions(out: dict[str, np.ndarray], what: str) -> None:
    """Raise DivergedError when a `pred_*` column (pred_majority aside: -1 there means no vote was asked for) holds -1,
    predicted_class's mark of a head whose logits were NaN or infinite: `what` names the trial. Such a point has no
    prediction, and counting it as a mistake would read as a finding about TTT (see prediction_metrics)."""
    bad = {name: int((v < 0).sum()) for name, v in out.items()
           if name.startswith("pred_") and name != "pred_majority" and (v < 0).any()}
    if bad:
        counts = ", ".join(f"{name} for {n} of {out[name].size} test points" for name, n in bad.items())
        raise DivergedError(f"{what}: logits NaN or infinite (training or TTT diverged): {counts}; no rows were "
                            "written: lower the learning rate of the head that diverged")


def ttt_chunk_for(device: torch.device, k: int, dim: int) -> int:
    """Test points per batched-TTT chunk: on a CPU as many as keep the (chunk, k, dim) neighbour features
    within CPU_CHUNK_FLOATS, since every Adam step reads them twice (measured on 2 cores: 1.6-1.8x faster
    than chunks of 256 at S1's shapes); on a GPU, GPU_CHUNK."""
    if device.type != "cpu":
        return GPU_CHUNK
    return max(1, min(GPU_CHUNK, CPU_CHUNK_FLOATS // (k * dim)))


class HeadTTTEvaluator:
    """`__call__({"point_id": (B,), "feature": (B, d), "label": (B,)})` -> per-point columns:
    point_id, label, pred_{global,ttt,majority}, ce_{global,ttt}, engine (the head-TTT engine that ran).

    pred_global / pred_ttt are -1 for a point whose logits are NaN or infinite (a diverged TTT run: no
    prediction; its ce is then NaN, and prediction_metrics refuses it). majority_k = 0 skips the majority
    baseline (its columns are then -1). engine: "auto" (the default: the
    engine harness/ttt/head_engines.py picks for this device, resolved here, where the device is known) or a
    name of HEAD_TTT_ENGINES ("exact": the fp32 torch engine; "fused-*": Triton GPU paths). `engine_name` is
    the engine that runs; one that cannot run on this device is a ConfigError naming `engine`."""

    def __init__(
        self,
        state: HeadState,
        ttt: HeadTTTConfig,
        majority_k: int = 0,
        retriever: str = "faiss",
        metric: str = "l2",
        device: str | None = None,
        chunk: int | None = None,
        engine: str = AUTO,
    ) -> None:
        self.device = trial_device(device)
        self.engine_name = resolve_head_engine(engine, self.device, (state.train_features, state.weight))
        n = state.train_features.shape[0]
        for name, k in (("ttt.k", ttt.k), ("majority_k", majority_k)):
            if k > n:
                raise ValueError(f"{name} = {k} is larger than the training set ({n} points)")
        self.ttt, self.majority_k = ttt, majority_k
        auto = ttt_chunk_for(self.device, ttt.k, state.train_features.shape[1])
        self.chunk = auto if chunk is None else min(chunk, auto)  # a given chunk is a cap (e.g. on memory)
        self.engine = HEAD_TTT_ENGINES.get(self.engine_name)
        self.retriever = build_retriever(state.train_features, retriever, metric, str(self.device))
        self.train_features = torch.from_numpy(np.ascontiguousarray(state.train_features, np.float32)).to(self.device)
        self.train_labels = torch.from_numpy(state.train_labels.astype(np.int64)).to(self.device)
        self.weight = torch.from_numpy(np.asarray(state.weight, np.float32)).to(self.device)
        self.bias = torch.from_numpy(np.asarray(state.bias, np.float32)).to(self.device)
        self.seconds = {"retrieval": 0.0, "ttt": 0.0}  # wall time of the calls so far (TTT: also global, majority)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feats = check_features("test features", np.stack(list(batch["feature"])), self.weight.shape[1])
        labels = np.asarray(batch["label"], np.int64)
        k_max = max(self.ttt.k, self.majority_k)
        start = time.perf_counter()
        neighbours = self.retriever.search(feats, k_max)[1]  # (B, k_max), nearest first
        self.seconds["retrieval"] += time.perf_counter() - start
        start = time.perf_counter()
        columns = ("pred_global", "pred_ttt", "pred_majority", "ce_global", "ce_ttt")
        cols: dict[str, list[np.ndarray]] = {n: [] for n in columns}
        for s in range(0, feats.shape[0], self.chunk):
            q = torch.from_numpy(feats[s : s + self.chunk]).to(self.device)  # (b, d)
            y = torch.from_numpy(labels[s : s + self.chunk]).to(self.device)  # (b,)
            nb = torch.from_numpy(neighbours[s : s + self.chunk]).to(self.device)  # (b, k_max)
            global_logits = q @ self.weight.T + self.bias  # (b, C)
            idx = nb[:, : self.ttt.k]
            ttt_logits = self.engine(self.weight, self.bias, self.train_features[idx], self.train_labels[idx], q,
                                     self.ttt)
            if self.majority_k:
                maj = majority_vote(self.train_labels[nb[:, : self.majority_k]], self.weight.shape[0])
            else:
                maj = torch.full_like(y, -1)
            for name, value in (
                ("pred_global", predicted_class(global_logits)), ("pred_ttt", predicted_class(ttt_logits)),
                ("pred_majority", maj),
                ("ce_global", torch.nn.functional.cross_entropy(global_logits, y, reduction="none")),
                ("ce_ttt", torch.nn.functional.cross_entropy(ttt_logits, y, reduction="none")),
            ):
                cols[name].append(value.cpu().numpy())
        out = {name: np.concatenate(v) for name, v in cols.items()}  # on the host: the device's work is done
        self.seconds["ttt"] += time.perf_counter() - start
        out["engine"] = np.full(labels.shape[0], self.engine_name)
        return {"point_id": np.asarray(batch["point_id"], np.int64), "label": labels, **out}


def prediction_metrics(out: dict[str, np.ndarray], ttt: HeadTTTConfig | None = None,
                       ) -> list[tuple[str, str, np.ndarray]]:
    """(method, metric, per-point values) triples from an evaluator's output columns.

    Raises a DivergedError (a ConfigError), before any row is made, when the TTT (or global) head diverged on some
    point: its logits NaN or infinite (pred -1) or too large for a finite cross-entropy. The message gives how many
    points, the engine (when `out` still holds its column) and, given `ttt`, the learning rate, steps and k, and
    says to lower --ttt-lr. Why an error rather than rows: a diverged point has no prediction and no cross-entropy. Its
    error could be set to 1, but a cross-entropy would have to be made up (NaN, inf, or the point left out of the
    mean), and a table whose TTT error counts divergences as mistakes reads as a finding about TTT when it is one
    about the learning rate; a researcher must see the divergence, not a number. In a grid sweep the error ends that
    trial only, without a retry (harness/distributed/sweep.py): the other trials finish and keep their cached rows,
    and the study exits naming the diverged trials, so a rerun with a smaller --ttt-lr recomputes only those. In a
    hyperparameter search the searcher is given the worst value for that trial and the search goes on."""
    for method in ("global", "ttt"):
        diverged = (out[f"pred_{method}"] < 0) | ~np.isfinite(out[f"ce_{method}"])
        if diverged.any():
            raise DivergedError(_divergence_message(method, int(diverged.sum()), diverged.size, out, ttt))
    label = out["label"]
    triples = [
        ("global", "error", (out["pred_global"] != label).astype(np.float64)),
        ("ttt", "error", (out["pred_ttt"] != label).astype(np.float64)),
        ("global", "cross_entropy", out["ce_global"].astype(np.float64)),
        ("ttt", "cross_entropy", out["ce_ttt"].astype(np.float64)),
    ]
    if (out["pred_majority"] >= 0).all():
        triples.append(("majority", "error", (out["pred_majority"] != label).astype(np.float64)))
    return triples


def _divergence_message(method: str, bad: int, n: int, out: dict[str, np.ndarray], ttt: HeadTTTConfig | None) -> str:
    where = f"for {bad} of {n} test points"
    if method == "global":
        return (f"the global head's logits are NaN or infinite, or too large for a finite cross-entropy, {where}: "
                "its training diverged; lower the global training's learning rate")
    engine = "+".join(sorted(set(out["engine"].tolist()))) if "engine" in out else None
    details = ", ".join(filter(None, [f"engine {engine}" if engine else None,
                                      f"lr {ttt.lr:g}, {ttt.steps} steps, k {ttt.k}" if ttt else None]))
    hint = "; or try --engine exact" if engine and engine != "exact" else ""
    return (f"TTT diverged: the adapted heads' logits are NaN or infinite, or too large for a finite cross-entropy, "
            f"{where}{f' ({details})' if details else ''}, so they have neither a prediction nor a cross-entropy and "
            f"no rows were written. The TTT learning rate is too large for these features: rerun with a smaller "
            f"--ttt-lr (or fewer --ttt-steps){hint}")
