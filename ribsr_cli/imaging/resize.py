"""MATLAB-compatible bicubic `imresize` in torch.

Why not `torch.nn.functional.interpolate(mode="bicubic")`? Every published SR
number is measured on LR images made by MATLAB's `imresize`, which differs from
torch's in ways that move PSNR by tenths of a dB: a = -0.5 instead of -0.75,
antialiasing when shrinking (the kernel is stretched by 1/scale), mirrored
indices at the borders instead of clamped ones, and, for uint8 images, rounding
and saturation after each one-dimensional pass. This module reproduces all of
that; its LR is pixel-identical to the official Set5/Set14 `LR_bicubic` files.

Each pass is a matmul with a banded weight matrix built from MATLAB's
`contributions()` weights and cached per (in_len, out_len, scale), so the
trainer's thousands of same-size crops pay for it once. uint8 input is
computed in float64: at x2 and x4 the weights are dyadic and every sum is
exact whatever the order, so .5 ties (frequent there) round as in MATLAB;
at other scales the order could only matter on an exact tie, and x3 matches
the official files too.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

# MATLAB's bicubic kernel width (the cubic is non-zero on (-2, 2)).
KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, written as MATLAB's `cubic()` is."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return inner + outer


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(weights, indices), each (taps, out_len): output j = sum_k weights[k, j] * input[indices[k, j]].

    Follows MATLAB's `contributions()`: 1-based output centres mapped back by
    u = x/scale + (1 - 1/scale)/2, ceil(width)+2 taps, rows normalised to sum 1,
    indices mirrored symmetrically at both edges, all-zero taps dropped.
    The arrays are read-only because they are shared through the cache.
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"cannot resize a length-{in_len} axis to {out_len}")
    width = KERNEL_WIDTH
    stretch = antialias and scale < 1
    if stretch:
        width = KERNEL_WIDTH / scale
    x = np.arange(1, out_len + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    indices = left + np.arange(taps, dtype=np.float64)[None, :]
    dist = u - indices
    weights = scale * cubic(scale * dist) if stretch else cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # MATLAB: aux = [1:n, n:-1:1]; indices = aux(mod(indices - 1, 2n) + 1), here 0-based.
    zero_based = np.mod(indices.astype(np.int64) - 1, 2 * in_len)
    indices = np.where(zero_based < in_len, zero_based, 2 * in_len - 1 - zero_based)
    keep = np.any(weights != 0, axis=0)
    weights = np.ascontiguousarray(weights[:, keep].T)
    indices = np.ascontiguousarray(indices[:, keep].T)
    weights.flags.writeable = False
    indices.flags.writeable = False
    return weights, indices


# Axes up to DENSE_MAX_LEN (the trainer's crops) are resized by one dense matmul per pass. Longer
# axes are cut into bands of output rows, each reading a window of about BAND_INPUT_SPAN input rows,
# so the work per output pixel stays ~ (span + taps) instead of growing with the image; all bands
# go through one gather and one batched matmul (many small ops crawl when the CPU is shared).
DENSE_MAX_LEN = 192
BAND_INPUT_SPAN = 64


@lru_cache(maxsize=256)
def _banded(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """`contributions` as bands: (matrices (bands, rows, span), input row per window slot (bands, span)).

    Band b computes outputs b*rows .. b*rows+rows-1 (the last band is zero-padded) from input rows
    windows[b]. Mirrored taps that land on the same input pixel are added into one matrix entry.
    """
    weights, indices = contributions(in_len, out_len, scale, antialias)
    rows = out_len if in_len <= DENSE_MAX_LEN else max(8, int(BAND_INPUT_SPAN * out_len / in_len))
    bands = -(-out_len // rows)
    starts, widths = [], []
    for b in range(bands):
        cols = indices[:, b * rows : (b + 1) * rows]
        starts.append(int(cols.min()))
        widths.append(int(cols.max()) + 1 - starts[-1])
    span = max(widths)
    starts = [min(start, in_len - span) for start in starts]  # same width everywhere, inside the image
    mats = np.zeros((bands, rows, span), dtype=np.float64)
    for j in range(out_len):
        b = j // rows
        np.add.at(mats[b, j - b * rows], indices[:, j] - starts[b], weights[:, j])
    windows = np.asarray(starts)[:, None] + np.arange(span)[None, :]
    mats.flags.writeable = False
    windows.flags.writeable = False
    return mats, windows


@lru_cache(maxsize=256)
def _device_banded(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_banded` on `device`: matrices, and the flat window gather index (None for a single dense band)."""
    mats, windows = _banded(in_len, out_len, scale, antialias)
    index = None if mats.shape[0] == 1 else torch.tensor(windows.reshape(-1), dtype=torch.long, device=device)
    return torch.tensor(mats, dtype=dtype, device=device), index


def output_size(in_len: int, scale: float) -> int:
    """MATLAB's output length for a scale factor: ceil(in_len * scale), in double arithmetic as MATLAB does."""
    return int(math.ceil(in_len * scale))


def round_to_uint8_range_(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero and saturate to 0..255, in place, as MATLAB's conversion to uint8 does.

    `torch.round` rounds half to even, which differs on exact .5 results, and
    those are common because bicubic weights at x2 and x4 are dyadic.
    floor(x + 0.5) is exact for every double except the one just below 0.5.
    """
    return x.add_(0.5).floor_().clamp_(0, 255)


def _resize_rows(x: torch.Tensor, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Resize dim 1 of a contiguous (N, L, M) float tensor with the banded weight matrices."""
    n, in_len, m = x.shape
    mats, index = _device_banded(in_len, out_len, scale, antialias, x.device, x.dtype)
    if index is None:
        return torch.matmul(mats[0], x)
    bands, rows, span = mats.shape
    windows = x.index_select(1, index).view(n, bands, span, m)
    return torch.matmul(mats, windows).view(n, bands * rows, m)[:, :out_len]


def _compute_dtype(x: torch.Tensor, exact: bool) -> torch.dtype:
    """float64 where MATLAB-exact rounding matters (MPS has no float64), else the input's float type."""
    if exact:
        return torch.float32 if x.device.type == "mps" else torch.float64
    if x.dtype in (torch.float32, torch.float64):
        return x.dtype
    return torch.float32


def imresize(
    x: torch.Tensor, scale: float, *, antialias: bool = True, round_uint8: bool | None = None
) -> torch.Tensor:
    """Bicubic resize of (H,W), (C,H,W) or (B,C,H,W) by `scale` (same factor for height and width).

    uint8 input gives uint8 output, rounded and saturated after each pass as
    MATLAB does. Float input gives float output without rounding, unless
    `round_uint8=True` (values taken as 0..255, rounded per pass, dtype kept).
    `round_uint8=False` on uint8 input returns unrounded float64 (float32 on MPS).
    """
    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"expected (H,W), (C,H,W) or (B,C,H,W), got shape {tuple(x.shape)}")
    is_uint8 = x.dtype == torch.uint8
    rounding = is_uint8 if round_uint8 is None else round_uint8
    if not is_uint8 and not x.is_floating_point():
        raise TypeError(f"imresize takes uint8 or floating tensors, got {x.dtype}")
    shape = x.shape
    h, w = shape[-2], shape[-1]
    out_h, out_w = output_size(h, scale), output_size(w, scale)
    work = x.reshape(-1, h, w).to(_compute_dtype(x, is_uint8 or rounding))
    # MATLAB resizes the dimensions in order of increasing scale; with one factor that is rows, then columns.
    work = _resize_rows(work, out_h, scale, antialias)
    if rounding:
        work = round_to_uint8_range_(work)
    # Columns: transposing once keeps every matmul on contiguous rows (strided slices are much slower).
    work = _resize_rows(work.transpose(1, 2).contiguous(), out_w, scale, antialias).transpose(1, 2)
    if rounding:
        work = round_to_uint8_range_(work)
    out = work.reshape(*shape[:-2], out_h, out_w)
    if is_uint8 and rounding:
        return out.to(torch.uint8)
    if not is_uint8 and out.dtype != x.dtype:
        return out.to(x.dtype)
    return out.contiguous()


def imresize_np(arr: np.ndarray, scale: float, *, antialias: bool = True) -> np.ndarray:
    """`imresize` for a numpy HxW or HxWxC image (uint8 stays uint8, rounded per pass)."""
    arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # PIL arrays are read-only
    if arr.ndim == 3:
        return imresize(t.permute(2, 0, 1), scale, antialias=antialias).permute(1, 2, 0).contiguous().numpy()
    if arr.ndim == 2:
        return imresize(t, scale, antialias=antialias).numpy()
    raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")


def modcrop(arr: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so height and width are multiples of `scale` (the benchmark convention)."""
    h, w = arr.shape[0], arr.shape[1]
    return arr[: h - h % scale, : w - w % scale]


def bicubic_degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """The standard SR degradation: mod-crop, then MATLAB bicubic downscale by 1/scale (uint8 per pass)."""
    return imresize_np(modcrop(hr, scale), 1.0 / scale)
