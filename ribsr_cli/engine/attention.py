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

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.engine import kernels
from ribsr_cli.engine.rib import rib_bias, rib_factors, rpb_bias
from ribsr_cli.engine.runtime import attention_core_dtype, total_memory_bytes

POSITIONAL = ("RIB", "RPB", "NoPE")
STRATEGIES = ("auto", "concat", "bias")

#: Largest window size for which, on CPU, a cached dense bias used as the SDPA mask beats the concat path,
#: per compute dtype. Measured (benchmarks/engine_speed.py --table, 1 thread, Xeon with AMX-BF16): in fp32
#: the bias costs 0.2-0.9x of concat up to ws 64; in bf16 it wins only up to ws 16 (ws 32: 1.04x, ws 64:
#: 1.26x), because concat's wider head dim is nearly free on AMX while the N x N mask is read every window.
BIAS_FASTER_UP_TO = {torch.float32: 64, torch.bfloat16: 16, torch.float16: 16}


def default_bias_budget() -> int:
    """Bytes all layers together may hold as cached dense biases: 1/64 of the machine's memory, 64 MiB to
    512 MiB (368 MiB on a 23 GiB machine). A total, not per layer: SST-light's five 64x64-window layers
    alone would take 1 GB in fp32. The machine's memory is `runtime.total_memory_bytes` (8 GiB where the OS
    will not say)."""
    total = total_memory_bytes(torch.device("cpu"))
    return int(min(max(total // 64, 64 * 2**20), 512 * 2**20))


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


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on `device` (a no-op where autocast does not exist)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]))


#: Head-dim multiple the fused CUDA kernels need in fp16/bf16 (FlashAttention, memory-efficient, cuDNN).
FUSED_HEAD_DIM_MULTIPLE = 8


def head_dim_multiple(device: torch.device) -> int:
    """What q/k/v's last dim is zero-padded to before a kernel call on `device`: 8 on CUDA, where a head
    dim of 30 (SST base) would otherwise drop to the math kernel; 1 (no copy) on CPU, whose kernels do not
    care. RIB's concat path is padded on every device (its width is odd anyway)."""
    return FUSED_HEAD_DIM_MULTIPLE if device.type == "cuda" else 1


def attend_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, *, scale: float,
                  kernel: str, strict: bool, multiple: int) -> tuple[torch.Tensor, str]:
    """`kernels.attend` with the head dim zero-padded to `multiple`: zero columns add nothing to q k^T and
    give zero output columns, which are cropped, so the result is the unpadded attention's."""
    d = q.shape[-1]
    width = -(-d // multiple) * multiple
    if width == d or kernel == "math":
        return kernels.attend(q, k, v, bias, scale=scale, kernel=kernel, strict=strict)
    out, ran = kernels.attend(_pad_last(q, width), _pad_last(k, width), _pad_last(v, width), bias, scale=scale,
                              kernel=kernel, strict=strict)
    return out[..., :d], ran


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
        #: Whether this layer's dense bias fits the model-wide cache budget (set by `plan_bias_budget`;
        #: until then, whether it fits the budget alone).
        self.bias_fits_budget = self.num_heads * window_size**4 * 4 <= default_bias_budget()
        self.cache_positional = True
        self.strict_kernel = False  # True: no SDPA fallback (the benchmark times the fused kernel or nothing)
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
        if not self.cache_positional or self.training or self.positional_needs_grad():
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

    def positional_needs_grad(self) -> bool:
        """True when a bias built now would carry a gradient (training): SDPA then leaves its fused CPU
        kernel for the math path (3x slower, 4x the memory), and the bias cannot be cached anyway."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self._positional_params())

    def resolve_strategy(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """How RIB reaches the kernel (RPB is always a dense bias). `auto`: concat on GPUs and whenever the
        bias would need a gradient; on CPU a cached bias where it is measured faster for this window size
        and dtype (`BIAS_FASTER_UP_TO`) and fits the model-wide budget, concat elsewhere."""
        if self.positional != "RIB":
            return "bias" if self.positional == "RPB" else "none"
        if self.strategy != "auto":
            return self.strategy
        if device.type != "cpu" or self.kernel == "flash" or self.positional_needs_grad():
            return "concat"
        fast = self.window_size <= BIAS_FASTER_UP_TO.get(dtype, 0)
        return "bias" if fast and self.bias_fits_budget and self.cache_positional else "concat"

    # ---- attention core ---------------------------------------------------
    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (windows, heads, N, D) -> (windows, heads, N, D)."""
        out_dtype = q.dtype
        dtype = attention_core_dtype(q.device, self.compute_dtype or q.dtype, q.requires_grad)
        # the core runs in `dtype` exactly: autocast would recast SDPA (it is on CPU/CUDA autocast's list)
        with autocast_off(q.device):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            strategy = self.resolve_strategy(q.device, dtype)
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
                out, ran = kernels.attend(q_cat, k_cat, v_cat, scale=1.0, kernel=self.kernel, strict=self.strict_kernel)
                out = out[..., :d]
            else:  # RPB's bias or no positional term: pad the head dim too, so these get the fused kernels RIB gets
                bias = (self._cached("bias", q.device, dtype, lambda: self.positional_bias().to(dtype))
                        if strategy == "bias" else None)
                out, ran = attend_padded(q, k, v, bias, scale=scale, kernel=self.kernel, strict=self.strict_kernel,
                                         multiple=head_dim_multiple(q.device))
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
            if cache is not None:
                m.cache_positional = cache
            m.clear_cache()
    plan_bias_budget(model, default_bias_budget() if bias_budget_bytes is None else bias_budget_bytes)
    return model


def plan_bias_budget(model: nn.Module, budget_bytes: int) -> None:
    """Share `budget_bytes` of cached dense biases among the RIB layers, smallest windows first (they gain
    most from a bias and cost least): a layer whose fp32 bias no longer fits uses concat under `auto`."""
    layers = sorted((m for m in model.modules() if isinstance(m, WindowAttention) and m.positional == "RIB"),
                    key=lambda m: m.num_heads * m.window_size**4)
    used = 0
    for m in layers:
        size = m.num_heads * m.window_size**4 * 4
        m.bias_fits_budget = used + size <= budget_bytes
        used += size if m.bias_fits_budget else 0


def attention_report(model: nn.Module) -> dict[str, list[str]]:
    """Kernels and RIB strategies that ran in the last forward, deduplicated (for user-facing reports)."""
    own_report = getattr(model, "kernel_report", None)
    if callable(own_report):  # a foreign (spandrel) model has no window attention: it names architecture + precision
        return own_report()
    ran, strategies = [], []
    for m in model.modules():
        if isinstance(m, WindowAttention) and m.last_kernel:
            if m.last_kernel not in ran:
                ran.append(m.last_kernel)
            if m.last_strategy not in strategies:
                strategies.append(m.last_strategy)
    return {"kernels": ran, "strategies": strategies}
