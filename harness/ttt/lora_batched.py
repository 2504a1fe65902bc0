"""Batched multi-LoRA TTT: the adapters of many test sequences trained in one forward/backward.

Every target projection W (d_out, d_in) of the frozen LM gets a *stack* of n adapters
(harness.models.lora.StackedLoRALinear). Row i of a batch uses adapter a = index[i]:

    y_i = W x_i + (alpha / r) * B_a (A_a x_i)        x_i (T, d_in), A (n, r, d_in), B (n, d_out, r)

computed for the whole batch with two bmm's: (N, T, d_in) @ (N, d_in, r) @ (N, r, d_out).

Training step j of a group of test sequences feeds chunk j of every sequence that still has one, each
row with its own adapter. The loss is the sum over rows of each row's *mean* token NLL, so adapter a's
gradient is exactly the gradient its sequence would get alone. Adam is element-wise, so one masked Adam
over the stacked tensors, with a step count per adapter and updates only for the rows that took part,
equals n separate torch Adam runs; gradient clipping uses each adapter's own norm. Equality with the
peft loop (harness.ttt.lora.PeftLoRATTT) is tested in fp32 and fp64.

The LM head's logits are never stored for backward: the loss (harness.ttt.lm_loss) forms their
gradient chunk by chunk. Master adapter weights and Adam state stay fp32; the forward runs in the model's
dtype (bf16 on GPU). A model spread over several GPUs (device_map="auto": layers on cuda:0, cuda:1, ...)
works as it is: each adapter stack lives beside its layer, and the per-adapter vectors (clip factors, masks,
step sizes) are formed on the first layer's device and copied to each stack's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from harness.eval.bits_per_byte import IGNORE, Row, pad_rows, row_nll
from harness.models.lora import attach_stacked_lora, kaiming_adapter_init
from harness.ttt.lm_loss import ce_chunk_loss_grad, weighted_token_loss
from harness.ttt.lora import PreparedSequence, SequenceResult, eval_rows
from harness.ttt.lora_config import LMTTTConfig


def _row_sq_norm(g: torch.Tensor) -> torch.Tensor:
    """(n, ...) -> (n,) squared norm of each adapter's slice (one read of g once compiled)."""
    return g.flatten(1).pow(2).sum(1)


def _masked_adam_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, coef: torch.Tensor,
                  keep: torch.Tensor, step_size: torch.Tensor, bc2_sqrt: torch.Tensor,
                  b1: float, b2: float, eps: float) -> None:
    """One Adam step of the adapters with keep[a] (torch.optim.Adam maths), grad scaled by coef[a] (the clip).

    All per-adapter vectors are (n,) tensors, so the compiled kernel never recompiles over steps;
    once compiled it reads p, g, m, v and writes p, m, v once each.
    """
    shape = (-1,) + (1,) * (p.dim() - 1)
    g = g * coef.view(shape)
    m_new = m * b1 + g * (1 - b1)
    v_new = v * b2 + g * g * (1 - b2)
    update = step_size.view(shape) * m_new / (v_new.sqrt() / bc2_sqrt.view(shape) + eps)
    k = keep.view(shape)
    m.copy_(torch.where(k, m_new, m))
    v.copy_(torch.where(k, v_new, v))
    p.sub_(torch.where(k, update, torch.zeros_like(update)))


class BatchedLoRATTT:
    """Runs LoRA TTT for groups of up to `max_batch` test sequences at once. Modifies `model` in place."""

    def __init__(self, model: nn.Module, cfg: LMTTTConfig, prefix_token: int, max_batch: int,
                 init: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 chunk_tokens: int = 4096, eval_batch: int | None = None, pad_id: int = 0,
                 compile_layers: bool = False, fuse_loss: bool = False, fuse_adam: bool = False) -> None:
        """fuse_loss / fuse_adam (opt-in speed paths, default off; attributes, so they can be toggled):
        torch.compile the LM-head loss's per-chunk softmax maths into one element-wise pass without
        fp32 (chunk, V) tensors, and the gradient clip + masked Adam into one kernel per adapter tensor."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.cfg, self.prefix_token = model, cfg, prefix_token
        self.max_batch, self.chunk_tokens, self.pad_id = max_batch, chunk_tokens, pad_id
        self.eval_batch = eval_batch or max_batch
        model.requires_grad_(False)
        model.eval()
        self.router, self.layers = attach_stacked_lora(model, cfg.target_modules, max_batch, cfg.rank, cfg.scale)
        if init is None:
            shapes = {n: tuple(layer.base.weight.shape) for n, layer in self.layers.items()}
            init = kaiming_adapter_init(shapes, cfg.rank, cfg.adapter_seed)
        missing = set(self.layers) - set(init)
        if missing:
            raise KeyError(f"adapter init lacks modules {sorted(missing)[:3]}...")
        self._init = {n: (init[n][0].to(layer.A.device, layer.A.dtype), init[n][1].to(layer.B.device, layer.B.dtype))
                      for n, layer in self.layers.items()}
        self.params = [p for layer in self.layers.values() for p in (layer.A, layer.B)]
        self.adapter_parameters = sum(p[0].numel() for p in self.params)  # one test sequence's adapter
        self._m = [torch.zeros_like(p) for p in self.params]  # Adam first moments, (n, ...) each
        self._v = [torch.zeros_like(p) for p in self.params]
        self._step_count = [0] * max_batch  # Adam step count per adapter
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        if compile_layers:  # fuses norms, rotary, SiLU and the LoRA adds; one graph serves every layer
            for layer in self.decoder.layers:
                layer.compile(dynamic=True)
        self.device = self.params[0].device
        self.fuse_loss, self.fuse_adam = fuse_loss, fuse_adam
        self._compiled: dict[str, object] = {}

    def _fn(self, name: str):
        """The torch.compile'd helper `name` (built on first use)."""
        if name not in self._compiled:
            fn = {"ce": ce_chunk_loss_grad, "sq": _row_sq_norm, "adam": _masked_adam_}[name]
            self._compiled[name] = torch.compile(fn)
        return self._compiled[name]

    @torch.no_grad()
    def reset(self) -> None:
        """Every adapter back to the fresh init, every Adam state to zero."""
        for name, layer in self.layers.items():
            a0, b0 = self._init[name]
            layer.A.copy_(a0.expand_as(layer.A))
            layer.B.copy_(b0.expand_as(layer.B))
        for t in self._m + self._v:
            t.zero_()
        self._step_count = [0] * self.max_batch
        for p in self.params:
            p.grad = None

    def _hidden(self, rows: Sequence[Row], adapters: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states (N, T, d) and labels (N, T) on the last layer's device; row i uses adapter
        adapters[i] (None: off)."""
        inp, lab = pad_rows(list(rows), self.pad_id)
        inp, lab = inp.to(self.device), lab.to(self.device)
        if adapters is None:
            self.router.index, self.router.prefix = None, None
        else:
            self.router.index = torch.tensor(adapters, device=self.device)
            self.router.prefix = len(adapters) if adapters == list(range(len(adapters))) else None
        try:
            hidden = self.decoder(input_ids=inp, use_cache=False).last_hidden_state
            return hidden, lab.to(hidden.device)
        finally:
            self.router.index, self.router.prefix = None, None

    @torch.no_grad()
    def _eval_nll(self, group: Sequence[PreparedSequence], lora: bool) -> list[float]:
        tagged = [(b, row) for b, s in enumerate(group) for row in eval_rows(s, self.cfg, self.prefix_token)]
        tagged.sort(key=lambda br: len(br[1][0]))  # similar lengths together: less padding
        totals = [0.0] * len(group)
        for s in range(0, len(tagged), self.eval_batch):
            part = tagged[s:s + self.eval_batch]
            hidden, lab = self._hidden([r for _, r in part], [b for b, _ in part] if lora else None)
            nll = row_nll(hidden, self.head.weight, lab, self.chunk_tokens)
            for (b, _), v in zip(part, nll.tolist(), strict=True):
                totals[b] += v
        return totals

    @torch.no_grad()
    def _adam_step(self, active: list[int]) -> None:
        """Masked Adam over the stacked adapters: only `active` adapters move (torch.optim.Adam maths).

        Fast path when every active adapter is at the same step and every idle one was never stepped:
        scalar bias corrections and foreach kernels over all adapters (an idle fresh adapter has zero
        grad and zero moments, so its update is exactly 0). Otherwise a per-adapter masked update.
        """
        cfg, (b1, b2) = self.cfg, self.cfg.adam_betas
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.fuse_adam:
            self._fused_adam_step(active, grads)
            return
        if cfg.grad_clip is not None:  # per-adapter total norm, as clip_grad_norm_ on one adapter alone
            sq = torch.stack([g.pow(2).flatten(1).sum(1).to(self.device) for g in grads]).sum(0)  # (n,)
            coef = (cfg.grad_clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)).to(g.device, g.dtype))
        steps = {self._step_count[b] for b in active}
        idle_fresh = all(self._step_count[b] == 0 for b in range(self.max_batch) if b not in set(active))
        for b in active:
            self._step_count[b] += 1
        if len(steps) == 1 and idle_fresh:
            t = steps.pop() + 1
            step_size, bc2_sqrt = cfg.lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t)
            torch._foreach_mul_(self._m, b1)
            torch._foreach_add_(self._m, grads, alpha=1 - b1)
            torch._foreach_mul_(self._v, b2)
            torch._foreach_addcmul_(self._v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(self._v)
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, cfg.adam_eps)
            torch._foreach_addcdiv_(self.params, self._m, denom, value=-step_size)
        else:
            mask = torch.zeros(self.max_batch, dtype=torch.bool, device=self.device)
            mask[active] = True
            t = torch.tensor(self._step_count, dtype=torch.float64, device=self.device).clamp(min=1)
            step_size = cfg.lr / (1 - b1 ** t)  # (n,)
            bc2_sqrt = (1 - b2 ** t).sqrt()
            for p, g, m, v in zip(self.params, grads, self._m, self._v, strict=True):
                shape = (-1,) + (1,) * (p.dim() - 1)
                keep = mask.view(shape).to(p.device)
                m.copy_(torch.where(keep, m * b1 + g * (1 - b1), m))
                v.copy_(torch.where(keep, v * b2 + g * g * (1 - b2), v))
                size, bc2 = step_size.view(shape).to(p.device), bc2_sqrt.view(shape).to(p.device)
                update = size * m / (v.sqrt() / bc2 + cfg.adam_eps)
                p.sub_(torch.where(keep, update, torch.zeros_like(update)).to(p.dtype))
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def _fused_adam_step(self, active: list[int], grads: list[torch.Tensor]) -> None:
        """_adam_step with fuse_adam: the same maths, per-adapter scalars as (n,) device tensors."""
        cfg, (b1, b2) = self.cfg, self.cfg.adam_betas
        dtype = self.params[0].dtype
        if cfg.grad_clip is not None:
            sq_fn = self._fn("sq")
            sq = torch.stack([sq_fn(g).to(self.device) for g in grads]).sum(0)  # (n,)
            coef = (cfg.grad_clip / (sq.sqrt() + 1e-6)).clamp(max=1.0).to(dtype)
        else:
            coef = torch.ones(self.max_batch, dtype=dtype, device=self.device)
        for b in active:
            self._step_count[b] += 1
        keep = torch.zeros(self.max_batch, dtype=torch.bool)
        keep[active] = True
        t = torch.tensor(self._step_count, dtype=torch.float64).clamp(min=1)
        step_size = (cfg.lr / (1 - b1 ** t)).to(dtype)
        bc2_sqrt = (1 - b2 ** t).sqrt().to(dtype)
        keep, step_size, bc2_sqrt = (x.to(self.device, non_blocking=True) for x in (keep, step_size, bc2_sqrt))
        adam = self._fn("adam")
        for p, g, m, v in zip(self.params, grads, self._m, self._v, strict=True):
            per = [x if x.device == p.device else x.to(p.device) for x in (coef, keep, step_size, bc2_sqrt)]
            adam(p, g, m, v, *per, b1, b2, cfg.adam_eps)
        for p in self.params:
            p.grad = None

    def train_group(self, group: Sequence[PreparedSequence]) -> None:
        """Fresh adapters 0..len(group)-1, then step j trains every sequence's chunk j (if any)."""
        self.reset()
        n_steps = max(len(s.train_rows) for s in group)
        for j in range(n_steps):
            active = [b for b, s in enumerate(group) if j < len(s.train_rows)]
            rows = [group[b].train_rows[j] for b in active]
            hidden, lab = self._hidden(rows, active)  # (N, T, d)
            counts = torch.tensor([sum(1 for y in lab if y != IGNORE) for _, lab in rows],
                                  dtype=torch.float32, device=hidden.device)
            loss = weighted_token_loss(hidden, self.head.weight, lab, 1.0 / counts, self.chunk_tokens,
                                       self._fn("ce") if self.fuse_loss else None)
            loss.backward()  # sum of per-row mean NLLs: each adapter gets the grad of its own mean
            self._adam_step(active)

    def run(self, seqs: Sequence[PreparedSequence]) -> list[SequenceResult]:
        """TTT results for every sequence, in input order."""
        out = []
        for s in range(0, len(seqs), self.max_batch):
            group = list(seqs[s:s + self.max_batch])
            g = self._eval_nll(group, lora=False)
            self.train_group(group)
            t = self._eval_nll(group, lora=True)
            out += [SequenceResult(q.point_id, q.n_bytes, len(q.eval_ids), q.n_neighbours, len(q.train_rows),
                                   gi, ti) for q, gi, ti in zip(group, g, t, strict=True)]
        self.reset()
        return out
