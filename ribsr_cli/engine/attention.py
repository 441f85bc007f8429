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
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.engine import kernels, strategy_probe
from ribsr_cli.engine.rib import rib_bias, rib_factors, rpb_bias
from ribsr_cli.engine.runtime import attention_core_dtype, total_memory_bytes

POSITIONAL = ("RIB", "RPB", "NoPE")
STRATEGIES = ("auto", "concat", "bias")



def default_bias_budget() -> int:
    """Bytes all layers together may hold as cached dense biases: 1/32 of the machine's memory, 64 MiB to
    1 GiB (736 MiB on a 23 GiB machine, 256 MiB on an 8 GiB laptop). A total, not per layer: SST-light's
    five 64x64-window layers alone take 1 GB in fp32 (500 MB in bf16, which fits here: `plan_bias_budget`
    counts each bias in its compute dtype). The machine's memory is `runtime.total_memory_bytes` (8 GiB
    where the OS will not say)."""
    total = total_memory_bytes(torch.device("cpu"))
    return int(min(max(total // 32, 64 * 2**20), 1024 * 2**20))


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
        bias would need a gradient; on CPU a cached bias where it fits the model-wide budget and this
        machine measured it faster for this layer's shape and dtype (`strategy_probe`), concat elsewhere."""
        if self.positional != "RIB":
            return "bias" if self.positional == "RPB" else "none"
        if self.strategy != "auto":
            return self.strategy
        if device.type != "cpu" or self.kernel == "flash" or self.positional_needs_grad():
            return "concat"
        if not (self.bias_fits_budget and self.cache_positional):
            return "concat"
        if strategy_probe.bias_is_faster(self.window_size, self.num_heads, self.head_dim, self.rank, dtype,
                                         lambda strategy: self._time_core(strategy, dtype)):
            return "bias"
        self._cache.pop(("bias", device, dtype), None)  # the probe's bias: not kept when concat won
        return "concat"

    def _time_core(self, strategy: str, dtype: torch.dtype) -> float:
        """Seconds for one attention core with `strategy` on about PROBE_TOKENS tokens of random q/k/v in the
        layout the forward hands over (the probe's measurement; the layer's settings are left as they were)."""
        n = self.window_size ** 2
        windows = max(1, strategy_probe.PROBE_TOKENS // n)
        saved = (self.strategy, self.last_kernel, self.last_strategy)
        try:
            with torch.inference_mode():
                qkv = torch.randn(windows, n, 3, self.num_heads, self.head_dim, dtype=dtype)
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
                self.strategy = strategy
                start = time.perf_counter()
                self._core(q, k, v)
                return time.perf_counter() - start
        finally:
            self.strategy, self.last_kernel, self.last_strategy = saved

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
                # concatenated in (windows, N, heads, width) order and handed over transposed: the kernel
                # takes the strides, and its output then comes back in the order the merge reads fastest
                q_pos = (q_pos / math.sqrt(r)).transpose(0, 1).unsqueeze(0).expand(windows, -1, -1, -1)
                k_pos = k_pos.transpose(0, 1).unsqueeze(0).expand(windows, -1, -1, -1)
                q_cat = _pad_last(torch.cat([(q * scale).transpose(1, 2), q_pos], dim=-1), width).transpose(1, 2)
                k_cat = _pad_last(torch.cat([k.transpose(1, 2), k_pos], dim=-1), width).transpose(1, 2)
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
        # Partition from channels-last order (b, hp, wp, 3C): a free view when the map is stored channels-last
        # (CPU inference, `runtime.pick_memory_format`), so the one copy is the gather into windows; channels
        # are [q|k|v] x heads x head_dim, windows row-major, tokens row-major inside a window.
        # The gather keeps each token's 3C channels together (windows, N, 3, heads, head_dim): rows of ws*3C
        # contiguous values move at memory speed, where gathering (3, windows, heads, N, head_dim) moved
        # 16-value pieces (130 ms per layer at 512x512 in bf16). q, k, v are strided views of it, which SDPA
        # takes as they are.
        qkv = self.to_qkv(x).permute(0, 2, 3, 1).reshape(b, hp // ws, ws, wp // ws, ws, 3 * c)
        qkv = qkv.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (windows, heads, N, head_dim)
        out = self._core(q, k, v)
        # merge back to (b, hp, wp, C) and view it as (b, C, hp, wp): channels-last memory, which the gate
        # (computed on the same map) and the 1x1 projection read without another layout change
        out = out.transpose(1, 2).reshape(b, hp // ws, wp // ws, ws, ws, c)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c).permute(0, 3, 1, 2)
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
    most from a bias and cost least): a layer whose bias (in its compute dtype) no longer fits uses concat
    under `auto`."""
    layers = sorted((m for m in model.modules() if isinstance(m, WindowAttention) and m.positional == "RIB"),
                    key=lambda m: m.num_heads * m.window_size**4)
    used = 0
    for m in layers:
        size = m.num_heads * m.window_size**4 * (m.compute_dtype or torch.float32).itemsize  # bf16 biases: half
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
