"""Lanczos resize of an integer photo to an exact size, at any bit depth (for `upscale --outscale`).

Why not `resize.imresize`? That one reproduces MATLAB's bicubic for the benchmark protocol and takes one
factor for both axes; a photographer's final size is a pair of integers, and the quality bar is a sharp,
antialiased filter. Pillow's Lanczos (support stretched when shrinking, so it antialiases) runs in C on
one float32 plane at a time, which keeps 16-bit samples exact in range and memory at one plane's worth.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def final_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """(width, height) of an input scaled by `factor`, rounded to whole pixels, at least 1."""
    return max(1, round(width * factor)), max(1, round(height * factor))


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxW or HxWxC uint8/uint16 image resized to (width, height); same dtype, rounded and clipped."""
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"resize_to takes uint8 or uint16 images, got {image.dtype}")
    if image.shape[1] == width and image.shape[0] == height:
        return image
    top = np.iinfo(image.dtype).max
    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty((height, width, planes.shape[2]), image.dtype)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32), mode="F")
        resized = np.rint(np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS)))
        out[..., c] = np.clip(resized, 0, top, out=resized)  # Lanczos rings past the range at hard edges
    return out[..., 0] if image.ndim == 2 else out
