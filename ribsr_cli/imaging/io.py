"""Photo input/output for `ribsr upscale`: one import point for reading, writing and the float domain.

Reading lives in `io_read`, writing in `io_write`, metadata plumbing in `metadata`;
this module re-exports them and adds the small helpers the upscaler needs between
them: format choice, folder scanning, and conversion to the network's RGB float
domain and back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ribsr_cli.imaging.io_read import ImageReadError, LoadedImage, read_image
from ribsr_cli.imaging.io_write import ImageWriteError, normalise_format, write_image

__all__ = [
    "IMAGE_EXTENSIONS", "ImageReadError", "ImageWriteError", "LoadedImage", "from_float", "is_image_path",
    "output_format_for", "read_image", "restore_channels", "to_float", "to_rgb", "write_image",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


def output_format_for(input_format: str, requested: str = "keep") -> tuple[str, str]:
    """(format, extension) to write: the input's own for 'keep' (GIF becomes PNG), else the request."""
    choice = str(requested).lower()
    if choice == "keep":
        source = str(input_format).upper()
        name = "PNG" if source == "GIF" else normalise_format(source)
    else:
        name = normalise_format(choice)
    return name, _EXTENSIONS[name]


def is_image_path(path: str | Path) -> bool:
    """Whether a folder scan should pick this file up, judged by extension (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_float(pixels: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from uint8 (/255) or uint16 (/65535) samples."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / np.float32(65535)
    raise TypeError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")


def from_float(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint8/uint16 from floats: NaN to 0, clipped to [0, 1], rounded to nearest."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    clean = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    scaled = np.rint(np.clip(clean, 0.0, 1.0) * np.float32(top))
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 for the network, which only sees RGB: grey is repeated into three channels."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 3:
        return pixels
    raise ValueError(f"expected 1 or 3 channels, got {pixels.shape[2]}")


def restore_channels(rgb: np.ndarray, like: LoadedImage) -> np.ndarray:
    """The network's RGB back to the source's channel count.

    Grey sources come back grey as the mean of the three channels (the network can
    drift them apart slightly; the mean is the least-biased grey). Integer inputs
    are rounded back to their own dtype; floats stay floats.
    """
    if not like.is_grey:
        return rgb
    grey = rgb.astype(np.float32).mean(axis=2, keepdims=True)
    if np.issubdtype(rgb.dtype, np.integer):
        return np.rint(grey).astype(rgb.dtype)
    return grey.astype(rgb.dtype)
