"""Device buffers of the fused designs for B heads, each allocating only what its design and Adam state use.

Row strides are padded to multiples of 16 elements (Triton then knows the rows are aligned and vectorises the
loads); tensors are the unpadded views. Shapes: W, m, v (B, C, d); c, m_c, v_c (B, C); fp16 operand copies of W
and c come in pairs (2, B, ...) where a step reads one and writes the other.
"""

from __future__ import annotations

import dataclasses

import torch

from harness.ttt.fused.launch import round_up

_PAIR = {"pair": True}  # field metadata: the batch axis is 1 (two alternating copies first)


def _padded(B: int, rows: int, cols: int, dtype: torch.dtype, device, pad: int = 16, zeros: bool = False,
            lead: tuple[int, ...] = ()) -> torch.Tensor:
    """A (*lead, B, rows, cols) view of a buffer whose rows are padded to a multiple of `pad` elements."""
    make = torch.zeros if zeros else torch.empty
    return make(*lead, B, rows, round_up(cols, pad), dtype=dtype, device=device)[..., :cols]


def batch_part(obj, lo: int, hi: int):
    """The same buffers (a dataclass of tensors and nested dataclasses) for points lo..hi-1, as views."""
    kw = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            kw[f.name] = batch_part(v, lo, hi)
        else:
            kw[f.name] = v[:, lo:hi] if f.metadata.get("pair") else v[lo:hi]
    return type(obj)(**kw)


@dataclasses.dataclass
class ThreeKernelBuffers:
    """The three-kernel design: W, m, v, c, m_c, v_c, ∇c; Z (B, k, C) and Dᵀ (B, C, k) in z_dtype (fp32; bf16 in
    the bf16 mode); the forward's per-row partials pmax, psum (B, k, nt) over nt column tiles."""

    W: torch.Tensor
    M: torch.Tensor
    V: torch.Tensor
    c: torch.Tensor
    Mc: torch.Tensor
    Vc: torch.Tensor
    gc: torch.Tensor
    Z: torch.Tensor
    DT: torch.Tensor
    pmax: torch.Tensor
    psum: torch.Tensor

    @classmethod
    def allocate(cls, B: int, k: int, C: int, d: int, z_dtype: torch.dtype, nt: int, device) -> ThreeKernelBuffers:
        f32 = {"dtype": torch.float32, "device": device}
        W, M, V = (torch.empty(B, C, d, **f32) for _ in range(3))
        c, Mc, Vc, gc = (torch.empty(B, C, **f32) for _ in range(4))
        return cls(W, M, V, c, Mc, Vc, gc, Z=_padded(B, k, C, z_dtype, device), DT=_padded(B, C, k, z_dtype, device),
                   pmax=torch.empty(B, k, nt, **f32), psum=torch.empty(B, k, nt, **f32))


@dataclasses.dataclass
class Fp32AdamState:
    """Adam's m, v (B, C, d) fp32 (W itself is updated in place), and two fp16 copies of W (2, B, C, d): the
    dot operand, written by the Adam step (step t reads copy (t-1) % 2 and writes copy t % 2)."""

    M: torch.Tensor
    V: torch.Tensor
    Wh: torch.Tensor = dataclasses.field(metadata=_PAIR)

    @classmethod
    def allocate(cls, B: int, C: int, d: int, device) -> Fp32AdamState:
        M, V = (torch.empty(B, C, d, dtype=torch.float32, device=device) for _ in range(2))
        return cls(M, V, _padded(B, C, d, torch.float16, device, lead=(2,)))


@dataclasses.dataclass
class HalfAdamState:
    """fp16 Adam state (precision "fp16-state"), all (B, C, d) fp16: W = hi + lo (hi is the next step's dot
    operand, updated in place), k·m and k·√v."""

    hi: torch.Tensor
    lo: torch.Tensor
    m: torch.Tensor
    s: torch.Tensor

    @classmethod
    def allocate(cls, B: int, C: int, d: int, device) -> HalfAdamState:
        hi, lo, m, s = (_padded(B, C, d, torch.float16, device, zeros=True) for _ in range(4))
        return cls(hi, lo, m, s)


@dataclasses.dataclass
class FlashBuffers:
    """The flash design: W (B, C, d) fp32, updated in place; c twice (2, B, C) (a step reads one, writes the
    other), m_c, v_c; lse (B, k); ∇W / k (B, C, d) fp32 between the gradient and Adam kernels; fp32 Adam state."""

    W: torch.Tensor
    c2: torch.Tensor = dataclasses.field(metadata=_PAIR)
    Mc: torch.Tensor
    Vc: torch.Tensor
    lse: torch.Tensor
    G: torch.Tensor
    state: Fp32AdamState

    @classmethod
    def allocate(cls, B: int, k: int, C: int, d: int, device) -> FlashBuffers:
        f32 = {"dtype": torch.float32, "device": device}
        W = torch.empty(B, C, d, **f32)
        Mc, Vc = (torch.empty(B, C, **f32) for _ in range(2))
        return cls(W, torch.empty(2, B, C, **f32), Mc, Vc, torch.empty(B, round_up(k, 16), **f32),
                   torch.empty_like(W), Fp32AdamState.allocate(B, C, d, device))

    def final_c(self, steps: int) -> torch.Tensor:
        """c after `steps` steps (the copy the last step wrote)."""
        return self.c2[steps % 2]


@dataclasses.dataclass
class SplitBuffers:
    """The split design: W (B, C, d) fp32 (fp32 state: updated in place; fp16 state: hi + lo at the end); c twice,
    m_c, v_c; lse (B, k), the softmax reference; E (B, k, C) and XB (B, k, d + 1) fp16, rows zero-padded to a
    multiple of 128 (the gradient kernel reads whole tiles); k·∇W (B, C, d), fp16 or fp32; per point an overflow
    flag ovf (B,); per row E[i, y_i] - L_i (ey) and max_j |X_ij| (xmax), (B, k); and the Adam state."""

    W: torch.Tensor
    c2: torch.Tensor = dataclasses.field(metadata=_PAIR)
    Mc: torch.Tensor
    Vc: torch.Tensor
    lse: torch.Tensor
    G: torch.Tensor
    E: torch.Tensor
    XB: torch.Tensor
    ovf: torch.Tensor
    ey: torch.Tensor
    xmax: torch.Tensor
    state: Fp32AdamState | HalfAdamState

    @classmethod
    def allocate(cls, B: int, k: int, C: int, d: int, device, *, g_fp16: bool, half_state: bool) -> SplitBuffers:
        if half_state and not g_fp16:
            raise ValueError("SplitBuffers: fp16 Adam state needs the fp16 gradient buffer (g_fp16)")
        f32 = {"dtype": torch.float32, "device": device}
        kp = round_up(k, 16)
        Mc, Vc = (torch.empty(B, C, **f32) for _ in range(2))
        state = (HalfAdamState.allocate(B, C, d, device) if half_state
                 else Fp32AdamState.allocate(B, C, d, device))
        return cls(
            W=torch.empty(B, C, d, **f32), c2=torch.empty(2, B, C, **f32), Mc=Mc, Vc=Vc,
            lse=torch.empty(B, kp, **f32),
            G=_padded(B, C, d, torch.float16 if g_fp16 else torch.float32, device),
            E=_padded(B, k, C, torch.float16, device, pad=128, zeros=True),
            XB=torch.zeros(B, k, round_up(d + 1, 128), dtype=torch.float16, device=device),
            ovf=torch.zeros(B, dtype=torch.int32, device=device), ey=torch.empty(B, kp, **f32),
            xmax=torch.zeros(B, kp, **f32), state=state,
        )

    def final_c(self, steps: int) -> torch.Tensor:
        """c after `steps` steps (the copy the last step wrote)."""
        return self.c2[steps % 2]
