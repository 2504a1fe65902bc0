"""The LM next-token loss of TTT steps, fused with the frozen LM head: no (N, T, V) logits kept for backward.

    loss = sum_rows row_weight[n] * sum_t NLL(softmax(h_nt W^T), y_nt)        h (N, T, d), W (V, d)

With row_weight = 1 / (scored tokens of the row) it is the sum of per-row mean NLLs, which gives each
row's LoRA adapter exactly the gradient its sequence would get alone (harness.ttt.lora_batched).
"""

from __future__ import annotations

import torch

from harness.eval.bits_per_byte import IGNORE, at_least_fp32


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
