"""PSNR / SSIM on the SR-paper protocol, against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ribsr_cli.imaging.metrics import gaussian_window, psnr, rgb_to_y, ssim

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def test_rgb_to_y_studio_range():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], rtol=0, atol=1e-12)
    assert rgb_to_y(np.full((1, 1, 3), 128, np.uint8))[0, 0] == pytest.approx(16 + 128 * 219 / 255)  # not rounded


def test_identical_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 30, 3), dtype=np.uint8)
    assert psnr(img, img, 2) == math.inf
    assert ssim(img, img, 2) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, 0, test_y=False) == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_on_grey_values():
    a = np.full((20, 20), 100, np.uint8)
    b = np.full((20, 20), 110, np.uint8)
    assert psnr(a, b, 0) == pytest.approx(10 * math.log10(255**2 / 100))  # 28.1308 dB
    assert psnr(a[..., None], b[..., None], 4) == pytest.approx(20 * math.log10(25.5))  # one channel = grey too
    # constant images: means 100 and 110, no variance, so SSIM = (2*100*110 + C1) / (100^2 + 110^2 + C1)
    assert ssim(a, b, 0) == pytest.approx((2 * 100 * 110 + C1) / (100**2 + 110**2 + C1), rel=1e-12)


def test_grey_is_not_converted_like_rgb():
    a = np.full((16, 16), 100, np.uint8)
    b = np.full((16, 16), 110, np.uint8)
    rgb_a, rgb_b = np.repeat(a[..., None], 3, axis=2), np.repeat(b[..., None], 3, axis=2)
    # as RGB the offset of 10 shrinks to 10 * 219/255 in Y, which would flatter the score
    assert psnr(rgb_a, rgb_b, 0) == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)))
    assert psnr(a, b, 0) == pytest.approx(20 * math.log10(25.5))
    assert psnr(rgb_a, rgb_b, 0, test_y=False) == pytest.approx(20 * math.log10(25.5))


def test_crop_border_ignores_the_frame():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    b = a.copy()
    b[:3] = 0
    b[:, -3:] = 255
    assert psnr(a, b, 3) == math.inf
    assert psnr(a, b, 2) < 40
    assert ssim(a, b, 3) == pytest.approx(1.0, abs=1e-12)


def test_single_pixel_error_psnr():
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    b[5, 5] = 51  # crop 2 leaves 36 pixels: MSE = 51^2 / 36
    assert psnr(a, b, 2) == pytest.approx(10 * math.log10(255**2 * 36 / 51**2))


def test_gaussian_window():
    g = gaussian_window()
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(g, g[::-1], rtol=0, atol=0)
    assert g[4] / g[5] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))


def _ssim_direct(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM with an explicit 2-D 11x11 window over every valid position (no separability)."""
    g = gaussian_window()
    w = np.outer(g, g)
    h, wd = x.shape
    maps = []
    for i in range(h - 10):
        for j in range(wd - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
            cov = (w * px * py).sum() - mx * my
            maps.append((2 * mx * my + C1) * (2 * cov + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(maps))


def test_ssim_matches_direct_window_computation():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (19, 23), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    expected = _ssim_direct(a.astype(np.float64), b.astype(np.float64))
    assert ssim(a, b, 0) == pytest.approx(expected, rel=1e-12)
    inner = _ssim_direct(a[1:-1, 1:-1].astype(float), b[1:-1, 1:-1].astype(float))
    assert ssim(a, b, 1) == pytest.approx(inner, rel=1e-12)


def test_rgb_ssim_is_the_channel_mean_and_y_uses_luma():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (20, 21, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    per_channel = [ssim(a[..., c], b[..., c], 2) for c in range(3)]
    assert ssim(a, b, 2, test_y=False) == pytest.approx(np.mean(per_channel), rel=1e-12)
    assert ssim(a, b, 2) == pytest.approx(_ssim_direct(rgb_to_y(a)[2:-2, 2:-2], rgb_to_y(b)[2:-2, 2:-2]), rel=1e-12)


def test_bad_inputs():
    a = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((20, 21), np.uint8), 0)
    with pytest.raises(ValueError):
        ssim(a, a, 5)  # 10x10 left: smaller than the window
    with pytest.raises(ValueError):
        rgb_to_y(a)
