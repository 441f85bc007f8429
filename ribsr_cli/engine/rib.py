"""Positional terms of window attention: RIB's rank-factorised field and RPB's table.

RIB (the paper's contribution) maps each token's window coordinate through
Fourier features and a one-hidden-layer MLP to per-head factors Qp, Kp (N x R).
Because `Qp @ Kp.T` *is* the positional bias, attention can stay a pure dot
product and run on FlashAttention kernels. RPB indexes a learned table with the
relative offset of two tokens, which yields a dense (heads, N, N) bias.
"""

from __future__ import annotations

import math

import torch


def window_coordinates(ws: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 2) normalised centres [u, v] of a ws x ws window, row-major tokens.

    u runs along columns and v along rows, both in (-1, 1): u = 2(x+0.5)/ws - 1.
    """
    centres = (torch.arange(ws, device=device, dtype=torch.float64) + 0.5) * (2.0 / ws) - 1.0
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1).to(dtype)


def fourier_features(ws: int, n_freqs: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 2 + 4F) features: [u, v] then, per octave i, [sin 2^i u, sin 2^i v, cos 2^i u, cos 2^i v]."""
    uv = window_coordinates(ws, device, torch.float64)
    parts = [uv]
    for i in range(n_freqs):
        scaled = uv * (2.0**i)
        parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, dim=-1).to(dtype)


def rib_factors(
    to_hidden: torch.Tensor,
    hidden_b: torch.Tensor,
    to_q: torch.Tensor,
    to_k: torch.Tensor,
    ws: int,
    n_freqs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head positional factors (heads, N, R) for a ws x ws window."""
    feats = fourier_features(ws, n_freqs, to_hidden.device, to_hidden.dtype)
    hidden = torch.relu(feats @ to_hidden + hidden_b)  # (N, hidden)
    q_pos = torch.einsum("nc,hcr->hnr", hidden, to_q)
    k_pos = torch.einsum("nc,hcr->hnr", hidden, to_k)
    return q_pos, k_pos


def rib_bias(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """The dense bias (heads, N, N) that the rank-R factors stand for: Qp Kp^T / sqrt(R)."""
    return (q_pos @ k_pos.transpose(-1, -2)) / math.sqrt(q_pos.shape[-1])


def relative_position_index(ws: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, N) index into a (2ws-1)^2 table: (ky-qy+ws-1)(2ws-1) + (kx-qx+ws-1)."""
    ys, xs = torch.meshgrid(torch.arange(ws, device=device), torch.arange(ws, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[None, :] - ys[:, None] + ws - 1  # key minus query
    dx = xs[None, :] - xs[:, None] + ws - 1
    return dy * (2 * ws - 1) + dx


def rpb_bias(table: torch.Tensor, ws: int) -> torch.Tensor:
    """Dense relative-position bias (heads, N, N) from a (heads, (2ws-1)^2) table."""
    index = relative_position_index(ws, table.device)
    return table[:, index]
