"""Bits per byte of a causal LM on a text: rolling-window rows, per-row log-likelihood, the formula.

A *row* is (input_ids, labels) of equal length: labels[i] is the token position i must predict, or
IGNORE. TTT training chunks (harness.ttt.lora.training_rows) and evaluation windows both become rows,
so one padding serves both; the training loss is harness.ttt.lm_loss.

Evaluation follows lm-evaluation-harness's rolling windows (context_len = 1): the evaluated tokens are
predicted in disjoint blocks of at most `max_tokens`; the first block is conditioned on a prefix token
(EOS) only, later blocks on the `max_tokens` tokens before them. Every evaluated token is scored once.

    bits_per_byte = -sum(log-likelihood in nats) / (UTF-8 bytes of the evaluated text) / ln 2

Two ways to total it over test sequences (S3 reports both):
- per sequence: the mean of each sequence's bits per byte (the rows' `value`, with bootstrap CIs);
- Pile-weighted (tttlm, Hardt & Sun's code: lm-eval's `bits_per_byte` aggregation per Pile subset, then
  `compute_pile_all` with `PILE_WEIGHTS`): per subset s, bpb_s = sum_i nll_i / sum_i bytes_i / ln 2 over its
  sequences (a byte-weighted mean of their bits per byte), then sum_s w_s bpb_s / sum_s w_s.
  tttlm evaluates every subset, so its sum_s w_s is 100 %; a sample that misses a subset is renormalised
  over the subsets it has, and the weight it covers is reported beside the total.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# tttlm's Pile subset weights (code/utils.py `PILE_WEIGHTS`, percent; they sum to 100), keyed here by the
# `meta.pile_set_name` of the Pile's JSONL lines (tttlm keys them by lm-eval task, e.g. "pile_pile-cc").
PILE_WEIGHTS: dict[str, float] = {
    "ArXiv": 8.96, "BookCorpus2": 0.75, "Books3": 12.07, "DM Mathematics": 1.24, "Enron Emails": 0.14,
    "EuroParl": 0.73, "FreeLaw": 6.12, "Github": 7.59, "Gutenberg (PG-19)": 2.17, "HackerNews": 0.62,
    "NIH ExPorter": 0.30, "OpenSubtitles": 1.55, "OpenWebText2": 10.01, "PhilPapers": 0.38, "Pile-CC": 18.11,
    "PubMed Abstracts": 3.07, "PubMed Central": 14.40, "StackExchange": 5.13, "Ubuntu IRC": 0.88,
    "USPTO Backgrounds": 3.65, "Wikipedia (en)": 1.53, "YoutubeSubtitles": 0.60,
}

IGNORE = -100  # label of a position that is not scored (HF / torch convention)

Row = tuple[list[int], list[int]]


def rolling_rows(ids: list[int], max_tokens: int, prefix_token: int) -> list[Row]:
    """Evaluation rows scoring every token of `ids` exactly once. Each row's input is <= max_tokens."""
    if not ids:
        raise ValueError("cannot score an empty token sequence")
    full = [prefix_token] + list(ids)  # full[j + 1] = ids[j]
    rows, predicted = [], 0
    while predicted < len(ids):
        n_pred = min(len(ids) - predicted, max_tokens)
        end = predicted + n_pred  # predict ids[predicted:end] = full[predicted + 1:end + 1]
        start = max(0, end - max_tokens)  # input full[start:end]
        inp = full[start:end]
        labels = [IGNORE] * (len(inp) - n_pred) + full[predicted + 1:end + 1]
        rows.append((inp, labels))
        predicted = end
    return rows


def pad_rows(rows: list[Row], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows to one length. -> input_ids (N, T) long, labels (N, T) long (pads = IGNORE).

    Right padding needs no attention mask under causal attention: real tokens never see the pads.
    """
    t = max(len(r[0]) for r in rows)
    inp = torch.full((len(rows), t), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        inp[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        lab[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    return inp, lab


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 -> fp32 for a stable log-softmax; fp32 and fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _token_nll(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of one chunk. h (n, d), weight (V, d), labels (n,) -> (n,) nats (0 at IGNORE), >= fp32."""
    logits = at_least_fp32(h @ weight.T)  # (n, V)
    return torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")


def row_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
            chunk_tokens: int = 4096) -> torch.Tensor:
    """Per-row summed NLL (nats) without materialising (N, T, V) logits.

    hidden (N, T, d) final hidden states, weight (V, d) the LM head, labels (N, T) -> (N,) in >= fp32.
    The N*T tokens are processed `chunk_tokens` at a time; under autograd each chunk is checkpointed,
    so the backward pass recomputes its (chunk, V) logits instead of storing them (fp32 logits over
    the 152k vocabulary would otherwise dominate memory).
    """
    n, t, d = hidden.shape
    flat_h, flat_l = hidden.reshape(n * t, d), labels.reshape(n * t)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for s in range(0, n * t, chunk_tokens):
        h, lab = flat_h[s:s + chunk_tokens], flat_l[s:s + chunk_tokens]
        if grad:
            parts.append(torch.utils.checkpoint.checkpoint(_token_nll, h, weight, lab, use_reentrant=False))
        else:
            parts.append(_token_nll(h, weight, lab))
    return torch.cat(parts).view(n, t).sum(dim=1)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """-sum log-likelihood (nats) / UTF-8 bytes / ln 2."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {n_bytes}")
    return float(nll_nats) / n_bytes / math.log(2)


def utf8_bytes(text: str) -> int:
    """UTF-8 byte count of `text`: the bits-per-byte denominator."""
    return len(text.encode("utf-8"))


def _weighted_parts(bpb: np.ndarray, n_bytes: np.ndarray, subsets: np.ndarray, weights: dict[str, float]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs -> (subset index per sequence (n,), subset names (S,), their weights (S,))."""
    if not (bpb.shape == n_bytes.shape == subsets.shape) or bpb.ndim != 1 or bpb.size == 0:
        raise ValueError(f"bits per byte {bpb.shape}, bytes {n_bytes.shape} and subsets {subsets.shape} must be "
                         "non-empty and of one length")
    if (n_bytes <= 0).any():
        raise ValueError(f"{int((n_bytes <= 0).sum())} sequences have no bytes to score")
    names, index = np.unique(subsets, return_inverse=True)
    unknown = [str(n) for n in names if n not in weights]
    if unknown:
        raise ValueError(f"subsets {unknown[:5]} have no Pile weight (known: {', '.join(weights)})")
    return index, names, np.array([weights[str(n)] for n in names], dtype=np.float64)


def pile_weighted_bits_per_byte(bpb: np.ndarray, n_bytes: np.ndarray, subsets: np.ndarray,
                                weights: dict[str, float] = PILE_WEIGHTS) -> tuple[float, float]:
    """tttlm's Pile-weighted bits per byte (module docstring). bpb, n_bytes, subsets: (n,) per test sequence.

    -> (total, covered weight share in (0, 1]: sum of the present subsets' weights / sum of all weights).
    ValueError for a subset name without a weight (not a Pile subset)."""
    bpb, n_bytes = np.asarray(bpb, dtype=np.float64), np.asarray(n_bytes, dtype=np.float64)
    index, _, w = _weighted_parts(bpb, n_bytes, np.asarray(subsets), weights)
    per_subset = np.bincount(index, bpb * n_bytes) / np.bincount(index, n_bytes)  # (S,) byte-weighted means
    return float(w @ per_subset / w.sum()), float(w.sum() / sum(weights.values()))


def pile_weighted_ci(bpb: np.ndarray, n_bytes: np.ndarray, subsets: np.ndarray, resamples: int = 1000,
                     level: float = 0.90, seed: int = 0, weights: dict[str, float] = PILE_WEIGHTS
                     ) -> tuple[float, float, float, float]:
    """The Pile-weighted total with a percentile bootstrap CI, sequences resampled within each subset
    (stratified: every resample keeps each subset's count). -> (total, low, high, covered weight share)."""
    bpb, n_bytes, subsets = (np.asarray(bpb, dtype=np.float64), np.asarray(n_bytes, dtype=np.float64),
                             np.asarray(subsets))
    total, covered = pile_weighted_bits_per_byte(bpb, n_bytes, subsets, weights)
    index, _, w = _weighted_parts(bpb, n_bytes, subsets, weights)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(index == s) for s in range(w.size)]
    stats = np.empty(resamples)
    for r in range(resamples):
        per_subset = np.empty(w.size)
        for s, m in enumerate(members):
            pick = m[rng.integers(0, m.size, m.size)]
            per_subset[s] = (bpb[pick] * n_bytes[pick]).sum() / n_bytes[pick].sum()
        stats[r] = w @ per_subset / w.sum()
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return total, float(low), float(high), covered
