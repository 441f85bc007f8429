"""Window self-attention with a pluggable positional scheme (RIB, RPB or none).

Data flow of one layer, for a (B, C, H, W) map and window ws:
gate on the un-padded input -> reflect-pad right/bottom to a multiple of ws ->
(optional cyclic shift by -ws/2) -> 1x1 qkv -> windows (row-major) ->
attention per head -> merge -> undo shift -> crop -> * gate -> 1x1 out.

RIB has two equivalent ways to reach the kernel, picked by `strategy`:
``concat`` appends the rank-R factors to q and k (pure dot product: what
FlashAttention accepts), ``bias`` materialises Qp Kp^T / sqrt(R) once per layer
and passes it as an additive mask (cheaper on CPU, ws^4 * heads floats of memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.engine import kernels
from ribsr_cli.engine.rib import rib_bias, rib_factors, rpb_bias

POSITIONAL = ("RIB", "RPB", "NoPE")
STRATEGIES = ("auto", "concat", "bias")

#: On CPU, ``auto`` caches a dense RIB bias for a layer only up to this size.
DEFAULT_BIAS_BUDGET_BYTES = 256 * 2**20


def reflect_pad(x: torch.Tensor, pad_right: int, pad_bottom: int) -> torch.Tensor:
    """Reflect-pad right/bottom; repeats the reflection when the pad exceeds the image (tiny inputs)."""
    while pad_right > 0 or pad_bottom > 0:
        step_r = min(pad_right, x.shape[-1] - 1)
        step_b = min(pad_bottom, x.shape[-2] - 1)
        if step_r <= 0 and step_b <= 0:  # a 1-pixel image cannot reflect: replicate
            return F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
        x = F.pad(x, (0, max(step_r, 0), 0, max(step_b, 0)), mode="reflect")
        pad_right -= max(step_r, 0)
        pad_bottom -= max(step_b, 0)
    return x


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]))


class WindowAttention(nn.Module):
    """Gated window attention; parameter names follow the reference checkpoints."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        rank: int,
        positional: str = "RIB",
        shift: bool = False,
        rib_hidden_dim: int = 32,
        rib_n_freqs: int = 10,
        gate: bool = True,
    ) -> None:
        super().__init__()
        if positional not in POSITIONAL:
            raise ValueError(f"unknown positional scheme {positional!r}; choose one of {', '.join(POSITIONAL)}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        self.rank, self.positional, self.shift = rank, positional, shift
        self.rib_n_freqs = rib_n_freqs
        if positional == "RIB":
            self.to_hidden = nn.Parameter(torch.empty(2 + 4 * rib_n_freqs, rib_hidden_dim))
            self.hidden_b = nn.Parameter(torch.zeros(1, rib_hidden_dim))
            self.to_q = nn.Parameter(torch.empty(num_heads, rib_hidden_dim, rank))
            self.to_k = nn.Parameter(torch.empty(num_heads, rib_hidden_dim, rank))
            for p in (self.to_hidden, self.to_q, self.to_k):
                nn.init.trunc_normal_(p, std=0.02 if p is not self.to_hidden else 0.2)
        elif positional == "RPB":
            self.relative_position_bias = nn.Parameter(torch.zeros(num_heads, (2 * window_size - 1) ** 2))
            nn.init.trunc_normal_(self.relative_position_bias, std=0.02)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.gate = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1)) if gate else None
        # Run-time settings, changed by `configure_attention`.
        self.kernel = "auto"
        self.strategy = "auto"
        self.compute_dtype: torch.dtype | None = None
        self.bias_budget_bytes = DEFAULT_BIAS_BUDGET_BYTES
        self.cache_positional = True
        self.last_kernel: str | None = None
        self.last_strategy: str | None = None
        self._cache: dict = {}

    # ---- positional terms -------------------------------------------------
    def _positional_params(self) -> list[torch.Tensor]:
        if self.positional == "RIB":
            return [self.to_hidden, self.hidden_b, self.to_q, self.to_k]
        if self.positional == "RPB":
            return [self.relative_position_bias]
        return []

    def _cached(self, kind: str, device: torch.device, dtype: torch.dtype, make):
        """Positional tensors depend only on the weights: reuse them at inference, recompute in training."""
        if not self.cache_positional or self.training or (
                torch.is_grad_enabled() and any(p.requires_grad for p in self._positional_params())):
            return make()
        stamp = tuple((p.data_ptr(), p._version) for p in self._positional_params())
        key = (kind, device, dtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = make()
        self._cache[key] = (stamp, value)
        return value

    def clear_cache(self) -> None:
        self._cache.clear()

    def rib_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return rib_factors(self.to_hidden, self.hidden_b, self.to_q, self.to_k, self.window_size, self.rib_n_freqs)

    def positional_bias(self) -> torch.Tensor | None:
        """The dense (heads, N, N) bias this layer adds to q k^T / sqrt(D) (None for NoPE)."""
        if self.positional == "RIB":
            return rib_bias(*self.rib_factors())
        if self.positional == "RPB":
            return rpb_bias(self.relative_position_bias, self.window_size)
        return None

    def resolve_strategy(self, device: torch.device) -> str:
        """How RIB reaches the kernel on this device (RPB is always a dense bias)."""
        if self.positional != "RIB":
            return "bias" if self.positional == "RPB" else "none"
        if self.strategy != "auto":
            return self.strategy
        if device.type != "cpu" or self.kernel == "flash":
            return "concat"
        n = self.window_size**2
        return "bias" if self.num_heads * n * n * 4 <= self.bias_budget_bytes else "concat"

    # ---- attention core ---------------------------------------------------
    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (windows, heads, N, D) -> (windows, heads, N, D)."""
        out_dtype = q.dtype
        dtype = self.compute_dtype or q.dtype
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        strategy = self.resolve_strategy(q.device)
        scale = 1.0 / math.sqrt(self.head_dim)
        if strategy == "concat":
            q_pos, k_pos = self._cached("factors", q.device, dtype,
                                        lambda: tuple(t.to(dtype) for t in self.rib_factors()))
            windows = q.shape[0]
            d, r = self.head_dim, self.rank
            width = -(-(d + r) // 8) * 8
            q_pos = (q_pos / math.sqrt(r)).unsqueeze(0).expand(windows, -1, -1, -1)
            k_pos = k_pos.unsqueeze(0).expand(windows, -1, -1, -1)
            q_cat = _pad_last(torch.cat([q * scale, q_pos], dim=-1), width)
            k_cat = _pad_last(torch.cat([k, k_pos], dim=-1), width)
            v_cat = _pad_last(v, width)
            out, ran = kernels.attend(q_cat, k_cat, v_cat, scale=1.0, kernel=self.kernel)
            out = out[..., :d]
        elif strategy == "bias":
            bias = self._cached("bias", q.device, dtype, lambda: self.positional_bias().to(dtype))
            out, ran = kernels.attend(q, k, v, bias, scale=scale, kernel=self.kernel)
        else:
            out, ran = kernels.attend(q, k, v, scale=scale, kernel=self.kernel)
        self.last_kernel, self.last_strategy = ran, strategy
        return out.to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws, heads, hd = self.window_size, self.num_heads, self.head_dim
        gate = torch.sigmoid(self.gate(x)) if self.gate is not None else None
        x = reflect_pad(x, (-w) % ws, (-h) % ws)
        hp, wp = x.shape[-2:]
        if self.shift:
            x = torch.roll(x, shifts=(-(ws // 2), -(ws // 2)), dims=(2, 3))
        qkv = self.to_qkv(x)
        # channels [q|k|v] x heads x head_dim; windows row-major, tokens row-major inside
        qkv = qkv.view(b, 3, heads, hd, hp // ws, ws, wp // ws, ws)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, -1, heads, ws * ws, hd)
        out = self._core(qkv[0], qkv[1], qkv[2])
        out = out.view(b, hp // ws, wp // ws, heads, ws, ws, hd)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        if self.shift:
            out = torch.roll(out, shifts=(ws // 2, ws // 2), dims=(2, 3))
        out = out[:, :, :h, :w]
        if gate is not None:
            out = out * gate
        return self.to_out(out)


def configure_attention(
    model: nn.Module,
    *,
    kernel: str | None = None,
    strategy: str | None = None,
    compute_dtype: torch.dtype | None | str = "keep",
    bias_budget_bytes: int | None = None,
    cache: bool | None = None,
) -> nn.Module:
    """Set the run-time attention settings of every window-attention layer in `model`."""
    if kernel is not None:
        kernels.check_kernel(kernel)
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"unknown RIB strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    for m in model.modules():
        if isinstance(m, WindowAttention):
            if kernel is not None:
                m.kernel = kernel
            if strategy is not None:
                m.strategy = strategy
            if compute_dtype != "keep":
                m.compute_dtype = compute_dtype  # type: ignore[assignment]
            if bias_budget_bytes is not None:
                m.bias_budget_bytes = bias_budget_bytes
            if cache is not None:
                m.cache_positional = cache
            m.clear_cache()
    return model


def attention_report(model: nn.Module) -> dict[str, list[str]]:
    """Kernels and RIB strategies that ran in the last forward, deduplicated (for user-facing reports)."""
    ran, strategies = [], []
    for m in model.modules():
        if isinstance(m, WindowAttention) and m.last_kernel:
            if m.last_kernel not in ran:
                ran.append(m.last_kernel)
            if m.last_strategy not in strategies:
                strategies.append(m.last_strategy)
    return {"kernels": ran, "strategies": strategies}
