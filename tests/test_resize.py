"""MATLAB-compatible bicubic imresize: official-LR parity, kernel facts and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ribsr_cli.imaging.resize import (
    bicubic_degrade,
    contributions,
    cubic,
    imresize,
    imresize_np,
    modcrop,
    output_size,
)


# ---- the key test: ribsr's degradation equals the official MATLAB-made LR files ----------


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_bicubic_degrade_matches_official_lr_pixel_for_pixel(benchmarks_dir, dataset):
    checked = 0
    for hr_path in sorted((benchmarks_dir / dataset / "HR").glob("*.png")):
        hr = np.asarray(Image.open(hr_path))
        for scale in (2, 3, 4):
            lr_path = benchmarks_dir / dataset / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
            official = np.asarray(Image.open(lr_path))
            ours = bicubic_degrade(hr, scale)
            assert ours.dtype == np.uint8
            assert ours.shape == official.shape, (hr_path.name, scale)
            diff = np.abs(ours.astype(int) - official.astype(int))
            assert diff.max() == 0, f"{hr_path.name} x{scale}: {(diff > 0).sum()} pixels differ"
            checked += 1
    assert checked >= 15


# ---- kernel and weights ---------------------------------------------------------------


def test_cubic_kernel_facts():
    x = np.linspace(-3, 3, 601)
    np.testing.assert_array_equal(cubic(x), cubic(-x))  # symmetric
    assert cubic(np.array([0.0]))[0] == 1.0
    np.testing.assert_array_equal(cubic(np.array([1.0, 2.0, -1.0, 2.5, -7.0])), 0.0)  # interpolating, support (-2, 2)
    # a = -0.5 by hand: 1.5|x|^3 - 2.5|x|^2 + 1 on [0,1]; -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 on [1,2]
    np.testing.assert_allclose(cubic(np.array([0.5, 1.5, 0.25, 1.75])), [0.5625, -0.0625, 111 / 128, -3 / 128],
                               rtol=0, atol=1e-15)
    for t in (0.0, 0.1, 0.25, 0.5, 0.9):  # partition of unity at integer spacing
        assert cubic(t + np.arange(-3, 4)).sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("in_len,scale",
                         [(1, 2.0), (5, 2.0), (7, 3.0), (64, 0.5), (30, 1 / 3), (96, 0.25), (17, 0.7), (9, 1.5)])
def test_contribution_weights_sum_to_one_and_indices_stay_inside(in_len, scale):
    out_len = output_size(in_len, scale)
    w, idx = contributions(in_len, out_len, scale)
    assert w.shape == idx.shape and w.shape[1] == out_len
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    assert idx.min() >= 0 and idx.max() < in_len


def test_tap_counts_follow_matlab():
    # ceil(width) + 2 taps before all-zero ones are dropped: width 4 (upscale), 4/scale (antialiased shrink).
    assert contributions(20, 40, 2.0)[0].shape[0] == 4  # two of the six candidate taps are always 0
    assert contributions(40, 20, 0.5)[0].shape[0] == 8
    assert contributions(40, 10, 0.25)[0].shape[0] == 16
    assert contributions(40, 20, 0.5, antialias=False)[0].shape[0] == 4


def test_interior_upscale_weights_by_hand():
    w, idx = contributions(8, 16, 2.0)
    # 1-based output 3 sits at u = 3/2 + 1/4 = 1.75: distances 1.75, 0.75, -0.25, -1.25 to inputs 0..3 (1-based).
    np.testing.assert_allclose(w[:, 2], [-3 / 128, 29 / 128, 111 / 128, -9 / 128], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(idx[:, 2], [0, 0, 1, 2])  # input "0" mirrors onto the first pixel


def test_output_size_is_matlab_ceil():
    assert output_size(255, 1 / 3) == 85
    assert output_size(5, 0.5) == 3
    assert output_size(7, 2.0) == 14
    assert imresize(torch.zeros(5, 7), 0.5).shape == (3, 4)


# ---- hand-computed results --------------------------------------------------------------

# Upscaling the ramp 0..7 by 2 (float): output j sits at u = j/2 - 0.25 (0-based) with weights
# -3/128, 29/128, 111/128, -9/128 (or mirrored) on its 4 neighbours. Interior outputs lie on the line
# (cubic a=-0.5 reproduces it); the first three see the mirrored ramp 1,0 | 0,1,2,..:
# out[0] = (-3*1 + 29*0 + 111*0 - 9*1)/128, out[1] = (-9*0 + 111*0 + 29*1 - 3*2)/128,
# out[2] = (-3*0 + 29*0 + 111*1 - 9*2)/128; the right end is the same, reflected.
RAMP_X2 = np.array([-12 / 128, 23 / 128, 93 / 128] + [j / 2 - 0.25 for j in range(3, 13)]
                   + [7 - 93 / 128, 7 - 23 / 128, 7 + 12 / 128])


def test_upscale_ramp_by_hand():
    ramp = torch.arange(8, dtype=torch.float64)[None, :]  # (1, 8): the single row stays a single constant column
    out = imresize(ramp, 2.0)
    assert out.shape == (2, 16) and out.dtype == torch.float64
    np.testing.assert_allclose(out[0].numpy(), RAMP_X2, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[0].numpy(), out[1].numpy())


def test_uint8_rounds_half_away_from_zero_and_clips():
    ramp = (torch.arange(8) * 10).to(torch.uint8)[None, :]
    out = imresize(ramp, 2.0)
    assert out.dtype == torch.uint8
    # 10 * RAMP_X2 = -0.9375, 1.796875, 7.265625, 12.5, 17.5, ...: clip, round, and .5 goes up (not to even)
    expected = np.clip(np.floor(10 * RAMP_X2 + 0.5), 0, 255)
    assert out[0, :5].tolist() == [0, 2, 7, 13, 18]
    np.testing.assert_array_equal(out[0].numpy(), expected)


def _reference(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB's resizeAlongDim as literally as possible: gather taps, sum in order, uint8 after each pass."""
    out = img.astype(np.float64)
    for axis in (0, 1):
        w, idx = contributions(out.shape[axis], output_size(out.shape[axis], scale), scale)
        moved = np.moveaxis(out, axis, 0)
        acc = np.zeros((w.shape[1],) + moved.shape[1:])
        for k in range(w.shape[0]):
            acc = acc + w[k].reshape(-1, *[1] * (moved.ndim - 1)) * moved[idx[k]]
        out = np.moveaxis(np.clip(np.floor(acc + 0.5), 0, 255), 0, axis)
    return out.astype(np.uint8)


@pytest.mark.parametrize("scale", [2.0, 3.0, 4.0, 0.5, 1 / 3, 0.25, 0.6])
def test_matches_gather_reference_with_per_pass_rounding(scale):
    rng = np.random.default_rng(int(scale * 1000))
    img = rng.integers(0, 256, size=(211, 230, 3), dtype=np.uint8)  # > 192: the banded path
    if scale > 1:
        img = img[:70, :61]
    np.testing.assert_array_equal(imresize_np(img, scale), _reference(img, scale))


def test_per_pass_rounding_differs_from_float_path():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 256, size=(3, 40, 40), dtype=np.uint8))
    per_pass = imresize(img, 0.5)
    once = imresize(img.double(), 0.5).add(0.5).floor().clamp(0, 255).to(torch.uint8)
    assert (per_pass != once).any()
    unrounded = imresize(img, 0.5, round_uint8=False)
    assert unrounded.dtype == torch.float64
    assert (unrounded - per_pass.double()).abs().max() < 1.0


@pytest.mark.parametrize("scale", [2.0, 3.0, 0.5, 1 / 3, 0.25, 0.8])
def test_constant_stays_constant(scale):
    for x in (torch.full((2, 3, 37, 29), 173, dtype=torch.uint8), torch.full((37, 29), 0.25, dtype=torch.float32)):
        out = imresize(x, scale)
        assert out.shape[-2:] == (math.ceil(37 * scale), math.ceil(29 * scale))
        assert out.dtype == x.dtype
        if x.dtype == torch.uint8:
            assert (out == 173).all()
        else:
            torch.testing.assert_close(out, torch.full_like(out, 0.25), rtol=0, atol=1e-6)


def test_identity_at_scale_one():
    rng = np.random.default_rng(2)
    u8 = torch.from_numpy(rng.integers(0, 256, size=(3, 19, 23), dtype=np.uint8))
    assert torch.equal(imresize(u8, 1.0), u8)
    f = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    torch.testing.assert_close(imresize(f, 1.0), f, rtol=0, atol=1e-15)


def test_layouts_and_batches_agree():
    rng = np.random.default_rng(3)
    batch = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 24, 20), dtype=np.uint8))
    out = imresize(batch, 0.5)
    assert out.shape == (2, 3, 12, 10)
    assert torch.equal(out[1], imresize(batch[1], 0.5))
    assert torch.equal(out[1, 2], imresize(batch[1, 2], 0.5))
    hwc = batch[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(imresize_np(hwc, 0.5), out[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(imresize_np(hwc[..., 0], 0.5), out[0, 0].numpy())


def test_float_types_are_kept():
    x = torch.rand(1, 1, 12, 12)
    assert imresize(x, 2.0).dtype == torch.float32
    assert imresize(x.half(), 0.5).dtype == torch.float16
    rounded = imresize(x * 255, 0.5, round_uint8=True)
    assert rounded.dtype == torch.float32 and torch.equal(rounded, rounded.round())


def test_bad_arguments():
    with pytest.raises(ValueError):
        imresize(torch.zeros(4, 4), 0.0)
    with pytest.raises(ValueError):
        imresize(torch.zeros(4), 2.0)
    with pytest.raises(TypeError):
        imresize(torch.zeros(4, 4, dtype=torch.int32), 2.0)


def test_modcrop_and_degrade_shapes():
    img = np.zeros((50, 37, 3), dtype=np.uint8)
    assert modcrop(img, 4).shape == (48, 36, 3)
    assert modcrop(img[..., 0], 3).shape == (48, 36)
    assert bicubic_degrade(img, 4).shape == (12, 9, 3)
    assert bicubic_degrade(img[..., 0], 3).shape == (16, 12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.integers(0, 256, size=(4, 3, 96, 96), dtype=np.uint8))
    for scale in (0.5, 1 / 3, 0.25, 2.0):
        assert torch.equal(imresize(x.cuda(), scale).cpu(), imresize(x, scale))
