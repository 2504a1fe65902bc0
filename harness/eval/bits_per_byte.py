"""Bits per byte of a causal LM on a text: rolling-window rows, per-row log-likelihood, the formula.

A *row* is (input_ids, labels) of equal length: labels[i] is the token position i must predict, or
IGNORE. TTT training chunks (harness.ttt.lora.training_rows) and evaluation windows both become rows,
so one padding serves both; the training loss is harness.ttt.lm_loss.

Evaluation follows lm-evaluation-harness's rolling windows (context_len = 1): the evaluated tokens are
predicted in disjoint blocks of at most `max_tokens`; the first block is conditioned on a prefix token
(EOS) only, later blocks on the `max_tokens` tokens before them. Every evaluated token is scored once.

    bits_per_byte = -sum(log-likelihood in nats) / (UTF-8 bytes of the evaluated text) / ln 2
"""

from __future__ import annotations

import math

import torch

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
