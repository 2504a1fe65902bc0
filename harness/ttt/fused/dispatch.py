"""Which design runs a precision, on which buffers, and the checks before it: `fused_head_ttt` (one call),
`FusedHeadTTT` (static buffers and one CUDA graph for repeated batches), `fused_engine` (the registry's form)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable

import torch

from harness.ttt.fused import flash, split, three_kernel
from harness.ttt.fused.blocks import (
    FP16_PRECISIONS,
    FlashBlocks,
    FusedBlocks,
    check_precision,
    default_blocks,
    fp16_blocks_for,
    three_kernel_blocks_for,
)
from harness.ttt.fused.buffers import FlashBuffers, SplitBuffers, ThreeKernelBuffers
from harness.ttt.fused.fp16_common import Fp16Run
from harness.ttt.fused.launch import round_up
from harness.ttt.linear import HeadTTTConfig, _check_shapes, batched_head_ttt

FP16_MAX = 60000.0  # inputs of the fp16 modes must stay below fp16's largest finite value (65504)


def check_fp16_range(t: torch.Tensor, what: str) -> float:
    """max |t|, refused (naming `what`) above FP16_MAX or when NaN: the fp16 modes' operands must fit fp16."""
    big = float(t.detach().abs().amax()) if t.numel() else 0.0
    if not big <= FP16_MAX:  # also catches NaN
        raise ValueError(f"precision 'fp16' needs |{what}| <= {FP16_MAX:g} (fp16 operands); got max {big:g}. "
                         "Use precision 'tf32' (engine 'fused-tf32') or engine 'exact' for inputs of this range")
    return big


def check_labels(labels: torch.Tensor, C: int) -> None:
    lo, hi = torch.stack([labels.min(), labels.max()]).tolist() if labels.numel() else (0, 0)  # one sync
    if lo < 0 or hi >= C:
        raise ValueError(f"neighbour labels must lie in [0, {C}) (the head's classes); got [{lo}, {hi}]")


def g_fp16_fits(blocks: FlashBlocks, k: int, feats_max: float, cfg: HeadTTTConfig | None = None,
                weight_max: float = 0.0) -> bool:
    """fp16 k·∇W holds |Σ_i P_ic x_ij| <= k·max|x| (|P| <= 1) only while that stays below fp16's range; with fp16
    Adam state, k·m and k·√v also carry k·wd·|W| (|W| grows by at most ~lr per step: bounded by 10·lr·steps)."""
    if not (blocks.design == "split" and blocks.g_fp16):
        return True
    bound = k * feats_max
    if blocks.state == "fp16" and cfg is not None and cfg.weight_decay:
        bound += k * abs(cfg.weight_decay) * (weight_max + 10 * cfg.lr * cfg.steps)
    return bound <= FP16_MAX


def _fp32_buffer(blocks: FlashBlocks, precision: str, where: str) -> FlashBlocks:
    warnings.warn(f"k * max|feats| exceeds fp16's range: {where} runs with an fp32 gradient buffer and Adam state "
                  f"(precision {precision!r})", stacklevel=3)
    return dataclasses.replace(blocks, g_fp16=False, state="fp32")


def _check_runnable(precision: str, interpret: bool) -> None:
    """Refuse what cannot run the kernels, instead of running something else."""
    if interpret:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("interpret=True needs TRITON_INTERPRET=1 in the environment before triton is imported")
        return
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"precision {precision!r} runs Triton kernels, but triton is not installed; use engine "
                           "'exact' (batched_head_ttt)") from e


def predict(W: torch.Tensor, c: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Logits (B, C) of heads W (B, C, d), c (B, C) on their own query (B, d): one fp32 bmm."""
    return torch.baddbmm(c.unsqueeze(1), query.unsqueeze(1), W.transpose(1, 2)).squeeze(1)


def _fp16_features(B: int, k: int, d: int, device) -> torch.Tensor:
    """A (B, k, d) fp16 buffer of neighbour features, rows padded to 16 elements."""
    return torch.zeros(B, k, round_up(d, 16), dtype=torch.float16, device=device)[..., :d]


def run_fp16_steps(run: Fp16Run) -> None:
    """cfg.steps Adam steps of the run's B heads by the design its buffers belong to (split or flash)."""
    if isinstance(run.ws, SplitBuffers):
        split.run_steps(run)
    else:
        flash.run_steps(run)


def fp16_buffers(B: int, k: int, C: int, d: int, blocks: FlashBlocks, device) -> FlashBuffers | SplitBuffers:
    """The buffers of the design (and Adam state) `blocks` names, and nothing else."""
    if blocks.design == "flash":
        return FlashBuffers.allocate(B, k, C, d, device)
    return SplitBuffers.allocate(B, k, C, d, device, g_fp16=blocks.g_fp16, half_state=blocks.state == "fp16")


def fused_head_ttt(
    weight: torch.Tensor,
    bias: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    query: torch.Tensor,
    cfg: HeadTTTConfig,
    return_heads: bool = False,
    *,
    precision: str = "tf32",
    z_dtype: torch.dtype | None = None,
    blocks: FusedBlocks | FlashBlocks | None = None,
    interpret: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batched_head_ttt` (same arguments, same returns) through the fused Triton kernels of `precision`.

    CUDA tensors run the kernels; CPU tensors run `batched_head_ttt` (the exact torch engine) unless
    interpret=True, which runs the same kernels under Triton's numpy interpreter (tests; slow; needs
    TRITON_INTERPRET=1 in the environment before triton is imported). z_dtype overrides the three-kernel
    design's Z / Dᵀ dtype; blocks its tiles (default: `default_blocks(precision, device)`).
    """
    check_precision(precision)
    _check_shapes(weight, bias, feats, labels, query)
    if (feats.device.type != "cuda" and not interpret) or cfg.steps == 0:
        return batched_head_ttt(weight, bias, feats, labels, query, cfg, return_heads=return_heads)
    _check_runnable(precision, interpret)
    blocks = blocks or default_blocks(precision, feats.device)
    B, k, d = feats.shape
    C = weight.shape[0]
    weight = weight.detach().float().contiguous()
    bias = bias.detach().float().contiguous()
    if precision in FP16_PRECISIONS:
        fp16 = fp16_blocks_for(precision, blocks)
        check_labels(labels, C)
        weight_max = check_fp16_range(weight, "weight")
        if not g_fp16_fits(fp16, k, check_fp16_range(feats, "feats"), cfg, weight_max):
            fp16 = _fp32_buffer(fp16, precision, "this call")
        x = _fp16_features(B, k, d, feats.device)
        x.copy_(feats.detach())
        run = Fp16Run(weight, weight.half(), bias, x, labels.contiguous(),
                      fp16_buffers(B, k, C, d, fp16, feats.device), cfg, fp16, interpret)
        run_fp16_steps(run)
        W_out, c_out = run.ws.W, run.ws.final_c(cfg.steps)
        logits = predict(W_out, c_out, query.detach().float())
        if isinstance(run.ws, SplitBuffers):
            logits, W_out, c_out = redo_overflowed_points(run.ws.ovf, weight, bias, feats, labels, query, cfg,
                                                          interpret, logits, W_out, c_out)
        return (logits, W_out, c_out) if return_heads else logits
    tiles = three_kernel_blocks_for(precision, blocks)
    x = feats.detach().to(three_kernel.operand_dtype(precision)).contiguous()
    ws = three_kernel.allocate(B, k, C, d, precision, tiles, feats.device, z_dtype)
    three_kernel.run_steps(weight, bias, x, labels.contiguous(), ws, cfg, precision, tiles, interpret)
    logits = predict(ws.W, ws.c, query.detach().float())
    return (logits, ws.W, ws.c) if return_heads else logits


def redo_overflowed_points(ovf, weight, bias, feats, labels, query, cfg, interpret, logits, W, c):
    """Points of a split run whose softmax reference left fp16's range (ovf > 0; not seen in practice: it needs a
    log-sum-exp to move by more than 11 in one step) are recomputed by the flash design."""
    bad = torch.nonzero(ovf).flatten()
    if bad.numel() == 0:
        return logits, W, c
    warnings.warn(f"fused fp16 'split': {bad.numel()} point(s) left fp16's range; recomputed by the flash design",
                  stacklevel=3)
    lg, Wb, cb = fused_head_ttt(weight, bias, feats[bad], labels[bad], query[bad], cfg, True, precision="fp16",
                                blocks=FlashBlocks(), interpret=interpret)
    logits, W, c = logits.clone(), W.clone(), c.clone()
    logits[bad], W[bad], c[bad] = lg, Wb, cb
    return logits, W, c


class FusedHeadTTT:
    """Fused TTT for repeated batches of at most `batch` points: static buffers, optionally one CUDA graph.

        engine = FusedHeadTTT(weight, bias, cfg, batch=64, precision="tf32")
        logits = engine(feats, labels, query)        # feats (b ≤ 64, k, d), labels (b, k), query (b, d)

    The global head is copied in at construction (change it with a new engine). With cuda_graph=True
    (default) the first call compiles the kernels and captures the whole TTT (the copy of the inputs into
    the static buffers excluded) as one graph; later calls copy the inputs in and replay. The fp16 modes split
    the batch over `blocks.streams` streams (use batch 128-256).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, cfg: HeadTTTConfig, batch: int,
                 precision: str = "tf32", z_dtype: torch.dtype | None = None, cuda_graph: bool | None = None,
                 blocks: FusedBlocks | FlashBlocks | None = None, check_range: bool = True) -> None:
        check_precision(precision)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if cfg.steps < 1:
            raise ValueError("FusedHeadTTT needs cfg.steps >= 1 (use batched_head_ttt for 0 steps)")
        if weight.device.type != "cuda":
            raise ValueError("FusedHeadTTT runs on CUDA tensors only; use fused_head_ttt / batched_head_ttt on CPU")
        _check_runnable(precision, False)
        self.cfg, self.batch, self.precision, self.check_range = cfg, batch, precision, check_range
        blocks = blocks or default_blocks(precision, weight.device)
        self.cuda_graph = True if cuda_graph is None else cuda_graph
        C, d = weight.shape
        dev = weight.device
        self.weight = weight.detach().float().clone().contiguous()
        self.bias = bias.detach().float().clone().contiguous()
        self.y = torch.zeros(batch, cfg.k, dtype=torch.int64, device=dev)
        self.q = torch.zeros(batch, d, dtype=torch.float32, device=dev)
        self.fp16: Fp16Run | None = None  # the fp16 modes' run (static inputs and buffers)
        self.three: tuple[FusedBlocks, ThreeKernelBuffers] | None = None  # the other modes' tiles and buffers
        if precision in FP16_PRECISIONS:
            fp16 = fp16_blocks_for(precision, blocks)
            self._weight_max = check_fp16_range(self.weight, "weight")
            self.x = _fp16_features(batch, cfg.k, d, dev)
            self.fp16 = Fp16Run(self.weight, self.weight.half(), self.bias, self.x, self.y,
                                fp16_buffers(batch, cfg.k, C, d, fp16, dev), cfg, fp16)
        else:
            tiles = three_kernel_blocks_for(precision, blocks)
            self.x = torch.zeros(batch, cfg.k, d, dtype=three_kernel.operand_dtype(precision), device=dev)
            self.three = (tiles, three_kernel.allocate(batch, cfg.k, C, d, precision, tiles, dev, z_dtype))
        self.logits = torch.empty(batch, C, dtype=torch.float32, device=dev)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._side_streams: list[torch.cuda.Stream] = []

    def heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapted heads of the last call: W (batch, C, d), c (batch, C) (static buffers)."""
        if self.fp16 is not None:
            return self.fp16.ws.W, self.fp16.ws.final_c(self.cfg.steps)
        assert self.three is not None
        return self.three[1].W, self.three[1].c

    def _body(self) -> None:
        if self.three is not None:
            tiles, ws = self.three
            three_kernel.run_steps(self.weight, self.bias, self.x, self.y, ws, self.cfg, self.precision, tiles, False)
        else:
            assert self.fp16 is not None
            self._fp16_body(self.fp16)
        self.logits.copy_(predict(*self.heads(), self.q))

    def _fp16_body(self, run: Fp16Run) -> None:
        n = min(run.blocks.streams, self.batch)
        if n <= 1:
            run_fp16_steps(run)
            return
        # the batch in parts on several streams: one part's memory-bound kernels can run beside another part's
        # compute-bound ones. Split: part j starts once part j-1 has done its first gradient, so the parts run
        # out of phase (one part's streaming Adam meets another's dots, not its own copy)
        bounds = [self.batch * j // n for j in range(n + 1)]
        main = torch.cuda.current_stream()
        if not self._side_streams:
            self._side_streams = [torch.cuda.Stream() for _ in range(n - 1)]
        staggered = isinstance(run.ws, SplitBuffers)
        for side in self._side_streams:
            side.wait_stream(main)  # the inputs copied in
        ev = None
        for j in range(n):
            stream = main if j == 0 else self._side_streams[j - 1]
            if j > 0 and ev is not None:
                stream.wait_event(ev)
            ev = torch.cuda.Event() if staggered and j < n - 1 else None
            part = run.part(bounds[j], bounds[j + 1])
            with torch.cuda.stream(stream):
                if isinstance(part.ws, SplitBuffers):
                    split.run_steps(part, first_grad_event=ev)
                else:
                    flash.run_steps(part)
        for side in self._side_streams:
            main.wait_stream(side)

    def __call__(self, feats: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 return_heads: bool = False):
        _check_shapes(self.weight, self.bias, feats, labels, query)
        b = feats.shape[0]
        if b > self.batch or feats.shape[1] != self.cfg.k:
            raise ValueError(f"feats has shape {tuple(feats.shape)}; this engine takes at most "
                             f"({self.batch}, {self.cfg.k}, d)")
        if self.fp16 is not None and self.check_range:
            check_labels(labels, self.weight.shape[0])
            if not g_fp16_fits(self.fp16.blocks, self.cfg.k, check_fp16_range(feats, "feats"), self.cfg,
                               self._weight_max):
                # features too large for the fp16 gradient buffer: this batch takes the fp32 one (no graph)
                return fused_head_ttt(self.weight, self.bias, feats, labels, query, self.cfg, return_heads,
                                      precision="fp16",
                                      blocks=_fp32_buffer(self.fp16.blocks, self.precision,
                                                          "this batch (outside the CUDA graph)"))
        self.x[:b].copy_(feats)
        self.y[:b].copy_(labels)
        self.q[:b].copy_(query)
        if not self.cuda_graph:
            self._body()
        elif self._graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body()  # compiles the kernels (outside the capture)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self._graph = graph
            graph.replay()
        else:
            self._graph.replay()
        W_all, c_all = self.heads()
        logits = self.logits[:b].clone()
        W, c = (W_all[:b].clone(), c_all[:b].clone()) if return_heads else (W_all[:b], c_all[:b])
        if self.fp16 is not None and isinstance(self.fp16.ws, SplitBuffers) and bool(self.fp16.ws.ovf[:b].any()):
            logits, W, c = redo_overflowed_points(self.fp16.ws.ovf[:b], self.weight, self.bias, feats, labels, query,
                                                  self.cfg, False, logits, W, c)
        return (logits, W, c) if return_heads else logits


def fused_engine(precision: str) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`fused_head_ttt` at `precision`, with exactly `batched_head_ttt`'s signature (a registry entry)."""
    check_precision(precision)

    def run(weight, bias, feats, labels, query, cfg, return_heads=False):
        return fused_head_ttt(weight, bias, feats, labels, query, cfg, return_heads, precision=precision)

    run.__name__ = f"fused_head_ttt_{precision.replace('-', '_')}"
    run.__doc__ = f"fused_head_ttt with precision={precision!r} (batched_head_ttt's signature)."
    return run
