"""PSNR and SSIM exactly as SR papers measure them.

The published tables use MATLAB-era conventions that change results by
several tenths of a dB if any one is missed: the luma channel Y of BT.601 in
studio range (16..235, unrounded), a border of `scale` pixels cropped, data
range 255, and SSIM over an 11x11 Gaussian window (sigma 1.5) without padding.
Grayscale images are scored on their grey values as they are: replicating them
into RGB and converting would rescale them into 16..235 and inflate PSNR.
Everything is float64 in numpy, so scores do not depend on the device.
"""

from __future__ import annotations

import math

import numpy as np

DATA_RANGE = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in studio range from RGB in 0..255: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (float64)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    rgb = img.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _prepare(img: np.ndarray, crop_border: int, test_y: bool) -> np.ndarray:
    """HxWxC float64 planes to score: Y for RGB when `test_y`, grey values for grayscale, crop applied."""
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {img.shape}")
    if img.shape[2] == 4:  # alpha is not part of the picture
        img = img[..., :3]
    if img.shape[2] == 3 and test_y:
        planes = rgb_to_y(img)[..., None]
    else:
        planes = img.astype(np.float64)
    if crop_border:
        planes = planes[crop_border:-crop_border, crop_border:-crop_border]
    if planes.shape[0] < 1 or planes.shape[1] < 1:
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {img.shape[0]}x{img.shape[1]} image")
    return planes


def _pair(a: np.ndarray, b: np.ndarray, crop_border: int, test_y: bool) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    return _prepare(a, crop_border, test_y), _prepare(b, crop_border, test_y)


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int, test_y: bool = True) -> float:
    """PSNR in dB for 0..255 images (inf when identical); MSE over all scored pixels and planes."""
    x, y = _pair(a, b, crop_border, test_y)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian; its outer product is the normalised 2-D SSIM window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D plane with outer(g, g) (no padding, as MATLAB's filter2 'valid')."""
    n = len(g)
    h, w = img.shape
    rows = sum(g[k] * img[k : h - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[:, k : w - n + 1 + k] for k in range(n))


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    g = gaussian_window()
    if x.shape[0] < len(g) or x.shape[1] < len(g):
        raise ValueError(f"SSIM needs at least {len(g)}x{len(g)} pixels after cropping, got {x.shape[0]}x{x.shape[1]}")
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x**2
    var_y = _filter_valid(y * y, g) - mu_y**2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int, test_y: bool = True) -> float:
    """Mean SSIM (Wang et al. 2004) over the scored planes: Y, grey, or each RGB channel averaged."""
    x, y = _pair(a, b, crop_border, test_y)
    return float(np.mean([_ssim_plane(x[..., c], y[..., c]) for c in range(x.shape[2])]))
