"""Pixel-domain conversions shared by the engine and the photo I/O: numpy only.

Kept apart from `imaging.io` (which pulls in Pillow, pypng and tifffile) so the
engine's tiler can use the very same rounding and grey handling without them.
"""

from __future__ import annotations

import numpy as np

#: BT.601 luma weights of R, G, B (full range): what a grey model expects of a colour photo, the luminance of
#: grey training noise, and the detail measure of training crops
LUMA = (0.299, 0.587, 0.114)


def to_float(pixels: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from uint8 (/255) or uint16 (/65535) samples; floats pass through as float32."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / np.float32(65535)
    if np.issubdtype(pixels.dtype, np.floating):
        return np.asarray(pixels, dtype=np.float32)
    raise TypeError(f"expected uint8, uint16 or float pixels, got {pixels.dtype}")


def round_levels(levels: np.ndarray) -> np.ndarray:
    """Values on the 0..255 scale -> the uint8 a saved image holds: half away from zero (up, for these
    non-negative values, as a saver rounds), clipped. The one rounding of eval's scores and of the
    degradation recipes."""
    return np.clip(np.floor(levels + 0.5), 0, 255).astype(np.uint8)


def from_float(arr: np.ndarray, bit_depth: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8/uint16 from floats: NaN to 0, clipped to [0, 1], rounded to nearest.

    With `out` (a uint8/uint16 array or view of the same shape) the result is written
    there, so the tiler fills its preallocated output without another full-size copy.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    # one float32 copy (nan_to_num's), then clip, scale and round in place: the tiler calls this per row band
    scaled = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled *= np.float32(top)
    np.rint(scaled, out=scaled)
    if out is None:
        return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)
    out[...] = scaled
    return out


def is_grey(pixels: np.ndarray) -> bool:
    return pixels.ndim == 2 or pixels.shape[2] == 1


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 for the network, which only sees RGB: grey (HxW or HxWx1) becomes a 3-channel view, no copy."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        return np.broadcast_to(pixels, (*pixels.shape[:2], 3))
    if pixels.shape[2] == 3:
        return pixels
    raise ValueError(f"expected 1 or 3 channels, got {pixels.shape[2]}")


def grey_like(rgb: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The network's RGB back to the source's channels: grey sources come back grey, shaped like the source.

    The grey is the mean of the three channels (the network can drift them apart
    slightly; the mean is the least-biased grey); integers are rounded back to
    their own dtype, floats stay floats.
    """
    if not is_grey(source):
        return rgb
    grey = rgb.mean(axis=2, dtype=np.float32, keepdims=source.ndim == 3)
    return np.rint(grey).astype(rgb.dtype) if np.issubdtype(rgb.dtype, np.integer) else grey.astype(rgb.dtype)
