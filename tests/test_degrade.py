"""The real-photo degradation pipeline: each operator against a hand-computed case, seeds, the eval recipe."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import BENCHMARKS, REPO
from ribsr_cli.imaging.metrics import psnr
from ribsr_cli.imaging.resize import bicubic_degrade, imresize
from ribsr_cli.training.degrade import (
    DEFAULT_CONFIG,
    DegradationConfig,
    degrade,
    degrade_batch,
    degrade_for_eval,
    filter2d,
    gaussian_kernel,
    gaussian_noise,
    generalized_gaussian_kernel,
    jpeg,
    plateau_kernel,
    poisson_noise,
    random_kernel,
    resize,
    sinc_kernel,
    to_uint8,
)

EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if p.suffix.lower() in (".png", ".jpg"))


def _photo(name: str = "chelsea.png", size: int | None = None) -> np.ndarray:
    img = np.asarray(Image.open(REPO / "examples" / name).convert("RGB"))
    return np.ascontiguousarray(img[:size, :size] if size else img)


def _tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float in [0, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


# ---- kernels ------------------------------------------------------------------------------------------------

def test_isotropic_kernel_is_the_explicit_gaussian() -> None:
    size, sigma = 9, 1.3
    explicit = np.array([[math.exp(-((i - 4) ** 2 + (j - 4) ** 2) / (2 * sigma**2)) for j in range(size)]
                         for i in range(size)])
    explicit /= explicit.sum()
    k = gaussian_kernel(size, sigma)
    np.testing.assert_allclose(k, explicit, rtol=1e-12)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T, rtol=1e-12)
    np.testing.assert_allclose(k, k[::-1], rtol=1e-12)


def test_anisotropic_kernel_orientation_and_spread() -> None:
    wide_x = gaussian_kernel(41, 4.0, 1.5, 0.0)
    assert wide_x.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(wide_x, wide_x[::-1, ::-1], atol=1e-15)  # point-symmetric
    r = np.arange(41) - 20
    var_x = (wide_x.sum(axis=0) * r**2).sum()  # second moment along columns (x)
    var_y = (wide_x.sum(axis=1) * r**2).sum()
    assert var_x == pytest.approx(16.0, rel=1e-3) and var_y == pytest.approx(2.25, rel=1e-3)
    # a quarter turn swaps the two axes
    np.testing.assert_allclose(gaussian_kernel(41, 4.0, 1.5, math.pi / 2), gaussian_kernel(41, 1.5, 4.0, 0.0),
                               atol=1e-12)


def test_generalized_and_plateau_kernels() -> None:
    np.testing.assert_allclose(generalized_gaussian_kernel(11, 1.7, 1.7, 0.3, 1.0), gaussian_kernel(11, 1.7),
                               rtol=1e-10)
    # plateau with beta 1 is 1 / (1 + d^2/sigma^2), written out by hand
    d2 = np.add.outer((np.arange(7) - 3.0) ** 2, (np.arange(7) - 3.0) ** 2) / 2.0**2
    explicit = 1 / (1 + d2)
    np.testing.assert_allclose(plateau_kernel(7, 2.0, 2.0, 0.0, 1.0), explicit / explicit.sum(), rtol=1e-12)
    for k in (generalized_gaussian_kernel(15, 2.0, 1.0, 0.7, 0.5), plateau_kernel(15, 2.0, 1.0, 0.7, 1.5)):
        assert k.sum() == pytest.approx(1.0) and (k > 0).all()
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    # peaky generalized (beta < 1) and plateau kernels keep more weight far out than the Gaussian
    g = gaussian_kernel(15, 2.0)
    assert generalized_gaussian_kernel(15, 2.0, 2.0, 0.0, 0.5)[0, 7] > g[0, 7]
    assert plateau_kernel(15, 2.0, 2.0, 0.0, 1.0)[0, 7] > g[0, 7]


def _bessel_j1(x: float) -> float:
    """J1 from its integral form (1/pi) int_0^pi cos(t - x sin t) dt, by the trapezoid rule (independent of torch)."""
    t = np.linspace(0.0, math.pi, 20001)
    return float(np.trapezoid(np.cos(t - x * np.sin(t)), t) / math.pi)


def test_sinc_kernel_is_a_circular_low_pass() -> None:
    cutoff = math.pi / 2
    k = sinc_kernel(21, cutoff)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1], atol=1e-15)
    # neighbour / centre = [c J1(c r) / (2 pi r)] / [c^2 / (4 pi)] = 2 J1(c) / c at r = 1, and at r = sqrt(2)
    assert k[10, 11] / k[10, 10] == pytest.approx(2 * _bessel_j1(cutoff) / cutoff, rel=1e-6)
    assert k[11, 11] / k[10, 10] == pytest.approx(2 * _bessel_j1(cutoff * math.sqrt(2)) / (cutoff * math.sqrt(2)),
                                                  rel=1e-6)
    # the frequency response passes well below the cutoff and stops well above it
    response = np.abs(np.fft.fft2(sinc_kernel(41, cutoff), s=(256, 256)))
    omega = lambda f: int(round(f / (2 * math.pi) * 256))  # noqa: E731 - bin of an angular frequency
    assert response[omega(0.2 * math.pi), 0] > 0.95
    assert response[omega(0.8 * math.pi), 0] < 0.05


def test_random_kernels_are_normalised_and_odd() -> None:
    rng = np.random.default_rng(3)
    cfg = DegradationConfig()
    for _ in range(50):
        k = random_kernel(rng, cfg, cfg.blur_sigma_first, 0.3)
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1 and 7 <= k.shape[0] <= 21
        assert k.sum() == pytest.approx(1.0)


def test_config_is_frozen_and_checked() -> None:
    cfg = DegradationConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.second_order_prob = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="kernel_probs"):
        DegradationConfig(kernel_probs=(0.5, 0.5))
    with pytest.raises(ValueError, match="resize_probs_first"):
        DegradationConfig(resize_probs_first=(0.5, 0.6, 0.1))


# ---- operators ----------------------------------------------------------------------------------------------

def test_filter2d_equals_a_direct_convolution() -> None:
    x = _tensor(_photo(size=64))[None]
    kernel = plateau_kernel(11, 2.0, 0.8, 0.4, 1.3)
    kernel[0, 2] += 0.05  # no symmetry left: catches a flipped kernel
    ref = F.conv2d(F.pad(x.reshape(3, 1, 64, 64), (5, 5, 5, 5), mode="reflect"),
                   torch.tensor(kernel, dtype=torch.float32)[None, None]).reshape(1, 3, 64, 64)
    torch.testing.assert_close(filter2d(x, kernel), ref, atol=2e-6, rtol=0)
    delta = np.zeros((7, 7))
    delta[3, 3] = 1
    torch.testing.assert_close(filter2d(x, delta), x, atol=1e-6, rtol=0)


def test_gaussian_noise_statistics() -> None:
    grey = torch.full((1, 3, 256, 256), 0.5)
    sigma = 8 / 255
    noise = gaussian_noise(grey, sigma, np.random.default_rng(0)) - grey
    n = noise.numel()
    assert abs(float(noise.mean())) < 4 * sigma / math.sqrt(n)
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert float(noise[0, 0].flatten() @ noise[0, 1].flatten()) / (n / 3) < 0.02 * sigma**2 * 3  # colour: independent
    mono = gaussian_noise(grey, sigma, np.random.default_rng(0), grey=True) - grey
    assert torch.equal(mono[:, 0], mono[:, 1]) and torch.equal(mono[:, 1], mono[:, 2])


def test_poisson_noise_variance_follows_intensity() -> None:
    peak = 1000.0
    variances = {}
    for level in (0.1, 0.8):
        flat = torch.full((1, 3, 256, 256), level, dtype=torch.float64)
        noise = poisson_noise(flat, peak, np.random.default_rng(1)) - flat
        assert abs(float(noise.mean())) < 4 * math.sqrt(level / peak / noise.numel())
        variances[level] = float(noise.var())
        assert variances[level] == pytest.approx(level / peak, rel=0.03)
    assert variances[0.8] / variances[0.1] == pytest.approx(8.0, rel=0.05)
    flat = torch.full((1, 3, 64, 64), 0.5)
    mono = poisson_noise(flat, peak, np.random.default_rng(1), grey=True) - flat
    assert torch.equal(mono[:, 0], mono[:, 2]) and float(mono.abs().max()) > 0


def test_jpeg_round_trip_changes_the_image_and_keeps_its_shape() -> None:
    x = _tensor(_photo(size=96))[None]
    q95, q50 = jpeg(x, 95), jpeg(x, 50)
    for out in (q95, q50):
        assert out.shape == x.shape and out.dtype == x.dtype
        assert not torch.equal(out, x)
        torch.testing.assert_close(out * 255, (out * 255).round(), atol=1e-4, rtol=0)  # on 8-bit levels
    to_np = lambda t: to_uint8(t[0]).permute(1, 2, 0).numpy()  # noqa: E731
    assert psnr(to_np(q95), to_np(x), crop_border=0) > psnr(to_np(q50), to_np(x), crop_border=0) + 3
    assert torch.equal(jpeg(x, 70), jpeg(x, 70))  # the real encoder is deterministic


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resize_gives_the_requested_size(mode: str) -> None:
    x = _tensor(_photo(size=60))[None]
    for size in ((30, 45), (91, 73), (60, 60)):
        out = resize(x, size, mode, antialias=True)
        assert tuple(out.shape) == (1, 3, *size)
    flat = torch.full((1, 3, 40, 40), 0.25)  # every mode keeps a flat image flat
    torch.testing.assert_close(resize(flat, (17, 23), mode), torch.full((1, 3, 17, 23), 0.25), atol=1e-6, rtol=0)


# ---- the pipeline ---------------------------------------------------------------------------------------------

def test_same_seed_same_lr_and_different_seed_different() -> None:
    hr = _tensor(_photo(size=96))
    a, b, c = degrade(hr, 2, 7), degrade(hr, 2, 7), degrade(hr, 2, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = torch.from_numpy(_photo(size=96)).permute(2, 0, 1)[None].repeat(3, 1, 1, 1)
    x = degrade_batch(batch, 2, np.random.default_rng(5))
    y = degrade_batch(batch, 2, np.random.default_rng(5))
    assert torch.equal(x, y) and x.dtype == torch.uint8
    assert not torch.equal(x[0], x[1])  # each crop of a batch gets its own draw


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lr_has_the_bicubic_protocol_size_and_stays_mild(scale: int) -> None:
    hr_u8 = _photo("coffee.png", size=96 + 1)  # odd side: LR is ceil(h / scale) as MATLAB's imresize gives
    hr = _tensor(hr_u8)
    clean = imresize(torch.from_numpy(hr_u8).permute(2, 0, 1), 1 / scale).permute(1, 2, 0).numpy()
    scores = []
    for seed in range(12):
        lr = degrade(hr, scale, seed)
        assert tuple(lr.shape) == (3, math.ceil(97 / scale), math.ceil(97 / scale))
        assert float(lr.min()) >= 0 and float(lr.max()) <= 1
        assert torch.equal(lr, to_uint8(lr).float() / 255)
        scores.append(psnr(to_uint8(lr).permute(1, 2, 0).numpy(), clean, crop_border=0))
    # camera-like, not destroyed: the degraded LR stays recognisably the clean LR, and is never identical
    assert 24 < float(np.median(scores)) < 45 and max(scores) < 99


# ---- the fixed evaluation recipe ---------------------------------------------------------------------------

def _recipe_checks(hr: np.ndarray, scale: int) -> None:
    lr = degrade_for_eval(hr, scale)
    reference = bicubic_degrade(hr, scale)
    assert lr.shape == reference.shape and lr.dtype == np.uint8
    assert np.array_equal(lr, degrade_for_eval(hr.copy(), scale))  # seeded from the content: reproducible
    # blur + 4/255 noise + JPEG 80: mild, but never nothing (flat sky, where JPEG smooths the noise, is ~40 dB)
    assert 25 < psnr(lr, reference, crop_border=scale) < 45


@pytest.mark.parametrize("scale", [2, 4])
def test_eval_recipe_on_set5(scale: int) -> None:
    folder = BENCHMARKS / "Set5" / "HR"
    if not folder.is_dir():
        pytest.skip(f"Set5 not found at {folder}")
    for path in sorted(folder.glob("*.png"))[:3]:
        _recipe_checks(np.asarray(Image.open(path).convert("RGB")), scale)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_eval_recipe_on_example_photos(path) -> None:
    hr = np.asarray(Image.open(path).convert("RGB"))[:203, :157]  # sides not multiples of 2, 3 or 4
    for scale in (2, 3):
        _recipe_checks(hr, scale)


def test_eval_recipe_noise_depends_on_the_image_and_grey_stays_grey() -> None:
    a = _photo("astronaut.png", size=64)
    b = a.copy()
    b[0, 0, 0] ^= 1  # one level on one pixel: a different image, so a different noise draw
    diff = degrade_for_eval(a, 2).astype(int) - degrade_for_eval(b, 2).astype(int)
    assert np.count_nonzero(diff) > 100
    grey = np.ascontiguousarray(a[..., 1])
    lr = degrade_for_eval(grey, 2)
    assert lr.shape == (32, 32) and lr.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        degrade_for_eval(a.astype(np.float32), 2)


def test_a_clean_prob_share_of_a_batch_gets_the_clean_bicubic_lr() -> None:
    """clean_prob draws first, per sample: those samples are exactly the benchmark LR (MATLAB bicubic of the
    uint8 crop), the others exactly what `degrade` makes from their own seeds; 0 and 1 are all or nothing."""
    import dataclasses

    crop = torch.from_numpy(_photo(size=96)).permute(2, 0, 1)
    batch = torch.stack([crop, crop.flip(-1), crop.flip(-2), crop.transpose(-1, -2)] * 4)
    bicubic = imresize(batch, 1 / 2)
    cfg = dataclasses.replace(DEFAULT_CONFIG, clean_prob=0.5)
    rng = np.random.default_rng(11)
    lr = degrade_batch(batch, 2, rng, cfg)
    replay = np.random.default_rng(11)
    clean = replay.random(len(batch)) < 0.5
    seeds = replay.integers(0, 2**63 - 1, size=len(batch))
    assert 0 < clean.sum() < len(batch)
    for i, (is_clean, seed) in enumerate(zip(clean, seeds)):
        want = bicubic[i] if is_clean else to_uint8(degrade(batch[i].float() / 255, 2, int(seed), cfg))
        assert torch.equal(lr[i], want), i
    none = degrade_batch(batch, 2, np.random.default_rng(3), dataclasses.replace(DEFAULT_CONFIG, clean_prob=0.0))
    every = degrade_batch(batch, 2, np.random.default_rng(3), dataclasses.replace(DEFAULT_CONFIG, clean_prob=1.0))
    assert torch.equal(every, bicubic)
    assert all(not torch.equal(none[i], bicubic[i]) for i in range(len(batch)))


# ---- the single-pass camera model ----------------------------------------------------------------------------

def _only(**fields) -> DegradationConfig:
    return dataclasses.replace(DEFAULT_CONFIG, **fields)


@pytest.mark.parametrize("scale", [2, 4])
def test_camera_noise_lands_on_the_lr_grid_at_its_stated_sigma(scale: int) -> None:
    """Why the camera model exists: its sensor noise has the stated sigma *in the LR*, at every scale, while
    the same sigma added on the HR (the chain's first order) is mostly averaged away by the downscale."""
    grey = torch.full((3, 64 * scale, 64 * scale), 0.5)
    camera = _only(camera_prob=1.0, camera_blur_prob=0.0, camera_noise_prob=1.0, jpeg_prob_final=0.0,
                   gaussian_noise_prob=1.0, grey_noise_prob=0.0, camera_noise_sigma=(6 / 255, 6 / 255))
    lr = degrade(grey, scale, 11, camera)
    assert tuple(lr.shape) == (3, 64, 64)
    assert abs(float((lr - 0.5).std()) * 255 - 6.0) < 0.3  # rounding to 8 bits adds ~0.29 levels
    on_hr = resize(gaussian_noise(grey[None], 6 / 255, np.random.default_rng(11)), (64, 64), "bicubic", True)
    assert float((on_hr - 0.5).std()) * 255 < 6.0 / scale * 1.2


def test_camera_model_is_seeded_and_blurs_in_lr_pixels() -> None:
    hr = _tensor(_photo(size=192))
    camera = _only(camera_prob=1.0)
    assert torch.equal(degrade(hr, 4, 3, camera), degrade(hr, 4, 3, camera))
    assert not torch.equal(degrade(hr, 4, 3, camera), degrade(hr, 4, 4, camera))
    # blur only: sigma 0.7 LR px removes the same share of detail at x2 and x4 (measured against the plain
    # antialiased downscale of the same photo), where a sigma in HR pixels would blur x4 half as much
    blur = _only(camera_prob=1.0, camera_blur_prob=1.0, camera_blur_sigma_lr=(0.7, 0.7), camera_noise_prob=0.0,
                 jpeg_prob_final=0.0)
    losses = []
    for scale in (2, 4):
        size = (192 // scale, 192 // scale)
        plain = to_uint8(resize(hr[None], size, "bicubic", True))[0].permute(1, 2, 0).numpy()
        soft = to_uint8(degrade(hr, scale, 0, blur)).permute(1, 2, 0).numpy()
        losses.append(psnr(soft, plain, crop_border=2))
    assert all(20 < s < 40 for s in losses) and abs(losses[0] - losses[1]) < 3.0, losses


def test_camera_prob_shares_the_samples() -> None:
    """About camera_prob of the non-clean samples take the camera model: told apart by their noise, which the
    chain never puts on the LR grid unfiltered at this strength."""
    grey = torch.full((3, 96, 96), 0.5)
    cfg = _only(camera_prob=0.5, camera_blur_prob=0.0, camera_noise_prob=1.0, jpeg_prob_final=0.0,
                gaussian_noise_prob=1.0, camera_noise_sigma=(8 / 255, 8 / 255), second_order_prob=0.0,
                noise_sigma_first=(1 / 255, 2 / 255), poisson_peak_first=(20000.0, 30000.0))
    stds = [float((degrade(grey, 4, seed, cfg) - 0.5).std()) * 255 for seed in range(200)]
    share = np.mean([s > 5 for s in stds])
    assert 0.4 < share < 0.6, share


def test_degradation_config_overrides_are_checked_field_by_field() -> None:
    """`degradation_config`: named fields replace the defaults (lists become tuples of the field's type);
    unknown names, probabilities outside [0, 1], reversed ranges and wrong shapes are ValueErrors."""
    from ribsr_cli.training.degrade import DEFAULT_CONFIG, degradation_config

    assert degradation_config(None) is DEFAULT_CONFIG and degradation_config({}) is DEFAULT_CONFIG
    cfg = degradation_config({"camera_prob": 1, "jpeg_quality_final": [70.0, 90], "camera_blur_sigma_lr": [0, 1]})
    assert cfg.camera_prob == 1.0 and isinstance(cfg.camera_prob, float)
    assert cfg.jpeg_quality_final == (70, 90) and all(isinstance(q, int) for q in cfg.jpeg_quality_final)
    assert cfg.camera_blur_sigma_lr == (0.0, 1.0) and cfg.clean_prob == DEFAULT_CONFIG.clean_prob
    for bad, message in [({"camera_prb": 1}, "unknown degradation setting"),
                         ({"clean_prob": 1.5}, "clean_prob must be a probability"),
                         ({"camera_noise_sigma": [0.03, 0.01]}, "must be a range"),
                         ({"camera_noise_sigma": [0.01]}, "give a list of 2 numbers"),
                         ({"camera_prob": "high"}, "give a number"),
                         ({"camera_prob": True}, "give a number"),
                         ({"resize_probs_first": [0.5, 0.5, 0.5]}, "must sum to 1")]:
        with pytest.raises(ValueError, match=message):
            degradation_config(bad)


def test_the_committed_degradation_configs_still_load() -> None:
    """scripts/degradation/*.json are what scripts/train_real.sh trains with: each must stay a valid override
    set as DegradationConfig evolves, and the typical-camera ranges must say what their name says."""
    from ribsr_cli.training.degrade import degradation_config, read_degradation_overrides

    files = sorted((REPO / "scripts" / "degradation").glob("*.json"))
    assert {f.name for f in files} >= {"chain-only.json", "typical-camera-x2.json", "typical-camera-x4.json"}
    configs = {f.stem: degradation_config(read_degradation_overrides(f)) for f in files}
    assert configs["chain-only"].camera_prob == 0.0
    for scale in (2, 4):
        typical = configs[f"typical-camera-x{scale}"]
        assert typical.camera_prob == 1.0
        # the same HR-pixel blur range at both scales: 0.2 to 1.4 HR px, expressed in LR px
        assert typical.camera_blur_sigma_lr == pytest.approx((0.2 / scale, 1.4 / scale))
