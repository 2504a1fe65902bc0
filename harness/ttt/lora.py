"""Per-test-sequence LoRA TTT with peft: sequence preparation and the reference loop.

For each test sequence (paper §E.7, tttlm):
  1. split its tokens into a query prefix and an evaluated suffix (harness.data.text_split);
  2. retrieve `num_neighbours` training texts for the query, most similar first;
  3. from a *fresh* adapter (the same init for every sequence), take one Adam step per neighbour
     chunk of <= max_tokens tokens, in retrieval order;
  4. score the evaluated suffix in bits per byte; the global baseline scores it with the adapter off;
  5. reset the adapter and the optimizer, so no state reaches the next sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from harness.data.text_split import split_tokens
from harness.eval.bits_per_byte import IGNORE, Row, at_least_fp32, bits_per_byte, rolling_rows, utf8_bytes
from harness.ttt.lora_config import LMTTTConfig

NeighbourFn = Callable[[list[str], int], list[list[str]]]  # (query texts, k) -> neighbour texts per query


class EmptyTextError(ValueError):
    """A text that tokenizes to nothing (or too little to score)."""


class NoNeighboursError(ValueError):
    """A test sequence for which retrieval returned no neighbour."""


@dataclasses.dataclass(frozen=True)
class PreparedSequence:
    """One test sequence ready for TTT: its evaluated tokens and its neighbours' training rows."""

    point_id: int
    eval_text: str
    eval_ids: tuple[int, ...]
    n_bytes: int  # UTF-8 bytes of eval_text: the bits-per-byte denominator
    train_rows: tuple[Row, ...]  # neighbour chunks in retrieval order, most similar first
    n_neighbours: int


@dataclasses.dataclass(frozen=True)
class SequenceResult:
    point_id: int
    n_bytes: int
    n_tokens: int
    n_neighbours: int
    n_steps: int
    nll_global: float  # nats, summed over the evaluated tokens
    nll_ttt: float

    @property
    def bpb_global(self) -> float:
        return bits_per_byte(self.nll_global, self.n_bytes)

    @property
    def bpb_ttt(self) -> float:
        return bits_per_byte(self.nll_ttt, self.n_bytes)


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


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_sequence(tokenizer, point_id: int, text: str, cfg: LMTTTConfig) -> tuple[str, str, list[int]]:
    """-> (query text, evaluated text, evaluated token ids) under the S3 split rule."""
    ids = _encode(tokenizer, text)
    if len(ids) < 2:
        raise EmptyTextError(f"test sequence {point_id} tokenizes to {len(ids)} token(s); at least 2 are "
                             f"needed to split it into a query and an evaluated part")
    q, e = split_tokens(ids, cfg.max_query_tokens)
    query_text, eval_text = tokenizer.decode(q), tokenizer.decode(e)
    eval_ids = _encode(tokenizer, eval_text)
    if not eval_ids or utf8_bytes(eval_text) == 0:
        raise EmptyTextError(f"test sequence {point_id}: its evaluated part {eval_text!r} tokenizes to nothing")
    return query_text, eval_text, eval_ids


def prepare_sequences(tokenizer, points: Sequence[tuple[int, str]], neighbours: NeighbourFn,
                      cfg: LMTTTConfig) -> list[PreparedSequence]:
    """Split, retrieve (one batched query) and tokenize neighbours for (point_id, text) pairs."""
    splits = [split_sequence(tokenizer, pid, text, cfg) for pid, text in points]
    found = neighbours([q for q, _, _ in splits], cfg.num_neighbours)
    out = []
    for (pid, _), (_, eval_text, eval_ids), texts in zip(points, splits, found, strict=True):
        texts = [t for t in texts if t]
        if not texts:
            raise NoNeighboursError(f"test sequence {pid}: retrieval returned no neighbours "
                                    f"(is the index empty or the query unrelated to every entry?)")
        rows = [r for t in texts for r in training_rows(_encode(tokenizer, t), cfg.max_tokens)]
        out.append(PreparedSequence(pid, eval_text, tuple(eval_ids), utf8_bytes(eval_text), tuple(rows),
                                    len(texts)))
    return out


def eval_rows(seq: PreparedSequence, cfg: LMTTTConfig, prefix_token: int) -> list[Row]:
    return rolling_rows(list(seq.eval_ids), cfg.max_tokens, prefix_token)


class PeftLoRATTT:
    """The reference engine: one test sequence at a time, peft LoRA, torch Adam, HF's own loss.

    Wraps `model` with peft in place. `initial_adapter()` exposes the adapter init so the batched
    engine can start from identical weights.
    """

    def __init__(self, model: torch.nn.Module, cfg: LMTTTConfig, prefix_token: int) -> None:
        from peft import LoraConfig, get_peft_model

        self.cfg, self.prefix_token = cfg, prefix_token
        torch.manual_seed(cfg.adapter_seed)  # the same fresh adapter for every sequence and run
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.target_modules),
                          lora_dropout=0.0, bias="none")
        self.model = get_peft_model(model, lora)
        self.model.eval()  # no dropout anywhere; training mode changes nothing else here
        self.device = next(self.model.parameters()).device
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.adapter_parameters = sum(p.numel() for p in self.trainable)  # what TTT trains per test sequence
        self._init = [p.detach().clone() for p in self.trainable]

    def initial_adapter(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Base module name -> (A (r, d_in), B (d_out, r)) of the fresh adapter."""
        out = {}
        for name, module in self.model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                base = name.removeprefix("base_model.model.")
                out[base] = (module.lora_A["default"].weight.detach().clone(),
                             module.lora_B["default"].weight.detach().clone())
        return out

    @torch.no_grad()
    def _reset(self) -> None:
        for p, p0 in zip(self.trainable, self._init, strict=True):
            p.copy_(p0)
            p.grad = None

    @torch.no_grad()
    def _nll(self, rows: list[Row]) -> float:
        total = 0.0
        for inp, lab in rows:
            x = torch.tensor([inp], device=self.device)
            y = torch.tensor(lab, device=self.device)
            logp = torch.log_softmax(at_least_fp32(self.model(input_ids=x).logits[0]), dim=-1)  # (T, V)
            keep = y != IGNORE
            total -= logp[keep].gather(1, y[keep, None]).sum().item()
        return total

    def evaluate(self, seq: PreparedSequence) -> SequenceResult:
        cfg = self.cfg
        rows = eval_rows(seq, cfg, self.prefix_token)
        self._reset()
        with self.model.disable_adapter():
            nll_global = self._nll(rows)
        opt = torch.optim.Adam(self.trainable, lr=cfg.lr, eps=cfg.adam_eps, betas=cfg.adam_betas)
        for inp, _ in seq.train_rows:
            x = torch.tensor([inp], device=self.device)
            loss = self.model(input_ids=x, labels=x).loss  # HF mean next-token NLL of the chunk
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        nll_ttt = self._nll(rows)
        self._reset()  # nothing of this sequence survives
        return SequenceResult(seq.point_id, seq.n_bytes, len(seq.eval_ids), seq.n_neighbours,
                              len(seq.train_rows), nll_global, nll_ttt)

    def run(self, seqs: Sequence[PreparedSequence]) -> list[SequenceResult]:
        return [self.evaluate(s) for s in seqs]
