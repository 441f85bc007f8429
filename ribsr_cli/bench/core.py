"""The attention core under test: its shape, a layer with a trained-like positional term, its inputs, and
the check that RIB's fast path computes what it claims, run before anything is timed.

The paper's claim: RIB's rank-R positional factors let biased window attention run as a plain dot product
(the factors are concatenated to q and k), so it stays on fused kernels such as FlashAttention, whereas an
RPB transformer adds a dense (heads, N, N) bias to the scores. Timing the concatenated form is only fair if
it equals explicit-bias attention, hence `check_rib`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ribsr_cli import errors
from ribsr_cli.bench.options import MAP_SIDE
from ribsr_cli.engine.attention import WindowAttention
from ribsr_cli.engine.kernels import attend
from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.engine.rib import rib_bias, rib_factors

#: Largest error the check accepts per compute dtype (bf16/fp16 round q, k and v themselves).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


@dataclass(frozen=True)
class CoreShape:
    """Heads, head dim and RIB rank of the chosen preset (rank: the largest, used by its big windows)."""

    heads: int
    head_dim: int
    rank: int
    hidden: int
    n_freqs: int

    @classmethod
    def from_config(cls, config: SSTConfig) -> CoreShape:
        heads = config.num_heads[0]
        return cls(heads, config.dim // heads, max(config.ranks), config.rib_hidden_dim, config.rib_n_freqs)


@dataclass
class Check:
    max_abs_err: float
    ok: bool
    tolerance: float
    details: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"max_abs_err": float(self.max_abs_err), "ok": bool(self.ok)}


class RibMismatch(errors.RibsrError, RuntimeError):
    """RIB's concatenated form disagreed with explicit-bias attention: timings would be meaningless."""

    def __init__(self, check: Check) -> None:
        super().__init__(
            f"RIB check failed: max abs error {check.max_abs_err:.3g} > tolerance {check.tolerance:g} "
            f"({'; '.join(check.details)})"
        )
        self.check = check


def windows_for(ws: int) -> int:
    """Windows that tile one MAP_SIDE^2 map (rounded: token count stays ~constant for any ws)."""
    return max(1, round(MAP_SIDE**2 / ws**2))


def make_layer(shape: CoreShape, ws: int, positional: str, device: torch.device, seed: int,
               corrupt: bool = False) -> WindowAttention:
    """A window-attention layer whose positional term is O(1), like a trained one.

    Freshly initialised RIB/RPB weights give biases of ~1e-3, which would let
    a wrong RIB path slip under the check's tolerance; these give a bias of
    standard deviation ~1 (max ~10), like a trained model's.
    """
    torch.manual_seed(seed + ws)
    layer = WindowAttention(shape.heads * shape.head_dim, shape.heads, ws, shape.rank, positional=positional,
                            rib_hidden_dim=shape.hidden, rib_n_freqs=shape.n_freqs, gate=False)
    gen = torch.Generator().manual_seed(seed * 7919 + ws)
    with torch.no_grad():
        if positional == "RIB":
            for p, std in ((layer.to_hidden, 0.3), (layer.hidden_b, 0.3), (layer.to_q, 0.2), (layer.to_k, 0.2)):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        elif positional == "RPB":
            p = layer.relative_position_bias
            p.copy_(torch.randn(p.shape, generator=gen))
    if corrupt:  # the classic bug: Qp scaled by 1/sqrt(4R) instead of 1/sqrt(R)
        layer.rank *= 4
    layer.strict_kernel = True  # a row times the kernel it names, never a silent fallback
    return layer.to(device)


def core_inputs(shape: CoreShape, ws: int, device: torch.device, dtype: torch.dtype, seed: int,
                windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (windows, heads, ws^2, head_dim), standard normal, the same for every variant."""
    gen = torch.Generator().manual_seed(seed * 104729 + ws)
    size = (windows or windows_for(ws), shape.heads, ws * ws, shape.head_dim)
    q, k, v = (torch.randn(size, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    return q, k, v


def check_rib(shape: CoreShape, windows: list[int], device: torch.device, dtype: torch.dtype,
              kernels: list[str], seed: int = 0, corrupt: bool = False, chunk: int = 1024) -> Check:
    """RIB's concatenated attention == explicit-bias attention with the materialised Qp Kp^T / sqrt(R).

    One window per size; the fp32 reference is built query-chunk by chunk so
    even a 96x96 window needs little memory.
    """
    tol = TOLERANCE[dtype]
    worst, details = 0.0, []
    for ws in windows:
        q, k, v = core_inputs(shape, ws, device, dtype, seed, windows=1)
        for kernel in kernels:
            layer = make_layer(shape, ws, "RIB", device, seed, corrupt).eval()
            layer.kernel, layer.strategy = kernel, "concat"
            with torch.no_grad():
                out = layer._core(q, k, v).float()
                q_pos, k_pos = rib_factors(layer.to_hidden, layer.hidden_b, layer.to_q, layer.to_k, ws,
                                           layer.rib_n_freqs)
                err = 0.0
                for start in range(0, ws * ws, chunk):
                    rows = slice(start, start + chunk)
                    ref, _ = attend(q[:, :, rows].float(), k.float(), v.float(), rib_bias(q_pos[:, rows], k_pos),
                                    scale=1.0 / math.sqrt(shape.head_dim), kernel="math")
                    err = max(err, (out[:, :, rows] - ref).abs().max().item())
            if not math.isfinite(err) or err > tol:
                details.append(f"window {ws}, kernel {kernel} ({layer.last_kernel}): {err:.3g}")
            worst = max(worst, err) if math.isfinite(err) else math.inf
    return Check(worst, not details, tol, details)
