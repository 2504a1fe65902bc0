"""Rolling-window log-likelihood rows and bits per byte.

A *row* is (input_ids, labels) of equal length: labels[i] is the token position i must predict, or
IGNORE. Training chunks and evaluation windows both become rows, so one loss function serves both.

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


def training_rows(ids: list[int], max_tokens: int) -> list[Row]:
    """Split a neighbour's tokens into chunks of <= max_tokens, one training row each.

    Chunk c trains next-token prediction inside c: labels = c[1:] + [IGNORE]. A chunk of one token has
    nothing to predict and is dropped.
    """
    rows = []
    for start in range(0, len(ids), max_tokens):
        c = list(ids[start:start + max_tokens])
        if len(c) >= 2:
            rows.append((c, c[1:] + [IGNORE]))
    return rows


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
    return len(text.encode("utf-8"))


class _FusedLinearCE(torch.autograd.Function):
    """loss = sum_i w_i * NLL(softmax(h_i W^T), y_i), with dloss/dh computed chunk-wise in the forward.

    Neither the (M, V) logits nor their softmax are kept for backward: the forward already forms
    grad_h = sum_i w_i (softmax_i - onehot(y_i)) W per chunk and keeps only that (M, d) tensor, so the
    backward is one multiply. This saves the logits recomputation a checkpointed loss would pay.
    """

    @staticmethod
    def forward(ctx, h, weight, labels, token_weight, chunk_tokens, chunk_fn=None):  # h (M, d), weight (V, d)
        loss = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        grad_h = torch.empty_like(h) if h.requires_grad else None
        for s in range(0, h.shape[0], chunk_tokens):
            hc, lab, w = h[s:s + chunk_tokens], labels[s:s + chunk_tokens], token_weight[s:s + chunk_tokens]
            if chunk_fn is not None:  # opt-in: one fused pass over the logits (see ce_chunk_loss_grad)
                part, g = chunk_fn(hc @ weight.T, lab, w)
                loss += part
                if grad_h is not None:
                    grad_h[s:s + chunk_tokens] = (g @ weight).to(h.dtype)
                continue
            logits = at_least_fp32(hc @ weight.T)  # (c, V)
            keep = lab != IGNORE
            safe = torch.where(keep, lab, torch.zeros_like(lab))
            logp = torch.log_softmax(logits, dim=-1)  # (c, V)
            w = torch.where(keep, w, torch.zeros_like(w)).to(logp.dtype)  # (c,)
            loss += -(logp.gather(1, safe[:, None]).squeeze(1) * w).sum()
            if grad_h is not None:
                g = logp.exp_()  # softmax, in place
                g.scatter_add_(1, safe[:, None], -torch.ones_like(w)[:, None])
                g.mul_(w[:, None])  # (c, V) dloss/dlogits
                grad_h[s:s + chunk_tokens] = (g.to(weight.dtype) @ weight).to(h.dtype)
        ctx.save_for_backward(grad_h)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), None, None, None, None, None


def ce_chunk_loss_grad(logits: torch.Tensor, labels: torch.Tensor, token_weight: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of _FusedLinearCE as a single element-wise program (meant for torch.compile).

    logits (c, V) in the model dtype, labels (c,), token_weight (c,) -> (sum_i w_i NLL_i in >= fp32,
    dloss/dlogits (c, V) in the logits' dtype). Same maths as the eager chunk, but written so that
    inductor reads the logits a few times and writes the gradient once, with no fp32 (c, V) tensors.
    """
    x = at_least_fp32(logits)
    keep = labels != IGNORE
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    w = torch.where(keep, token_weight, torch.zeros_like(token_weight)).to(x.dtype)
    lse = torch.logsumexp(x, dim=-1)  # (c,)
    tgt = x.gather(1, safe[:, None]).squeeze(1)
    loss = ((lse - tgt) * w).sum()
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == safe[:, None]
    g = (torch.exp(x - lse[:, None]) - onehot.to(x.dtype)) * w[:, None]
    return loss, g.to(logits.dtype)


def weighted_token_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        row_weight: torch.Tensor, chunk_tokens: int = 4096, chunk_fn=None) -> torch.Tensor:
    """sum_rows row_weight[n] * (summed NLL of row n), fused with the LM head. -> () in >= fp32.

    hidden (N, T, d), weight (V, d) frozen LM head, labels (N, T), row_weight (N,). With
    row_weight = 1 / (scored tokens of the row) this is the sum of per-row mean NLLs. chunk_fn
    (opt-in, e.g. torch.compile(ce_chunk_loss_grad)) replaces the eager per-chunk softmax maths.
    """
    n, t, d = hidden.shape
    token_weight = row_weight[:, None].expand(n, t).reshape(n * t)
    return _FusedLinearCE.apply(hidden.reshape(n * t, d), weight, labels.reshape(n * t), token_weight,
                                chunk_tokens, chunk_fn)
