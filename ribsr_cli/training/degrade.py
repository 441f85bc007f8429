"""Synthetic real-world degradations: what a photographer's JPEG did to the scene before ribsr sees it.

The shipped models learn from clean MATLAB-bicubic LR; phone and camera files also carry optical and
demosaicing blur, sensor noise, resampling and JPEG blocking. This module makes such LR on the fly for
training, following the *structure* described in the Real-ESRGAN paper (Wang et al. 2021, "high-order"
degradation: the classical blur → resize → noise → JPEG chain applied twice, with a 2-D sinc filter for
ringing) and the BSRGAN paper (Zhang et al. 2021: random kernels, random resize modes, Gaussian noise in colour
and grey). It is written from those descriptions; the ranges are ribsr's own (see `DegradationConfig`).
Half of the degraded samples take a single-pass *camera model* instead (`_camera`: optics blur, sampling to
the LR grid, sensor noise on that grid, JPEG), because a photographer's file is itself the LR: its noise sits
at its own pixel scale, which the two-order chain, adding its first noise on the HR, rarely produces.

Everything random is drawn from a numpy `Generator` on the CPU, so one seed gives the same LR bit for bit
whatever the device doing the arithmetic (torch ops on the tensor's own device; JPEG goes through Pillow's
libjpeg encoder and decoder on the CPU, because only a real encoder makes real blocking).

`degrade_for_eval` is the one fixed recipe that `ribsr eval --degrade real` and the trainer's validation score
against: its parameters are module constants below, documented where they are defined.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ribsr_cli.engine.damage import Damage, luma_noise
from ribsr_cli.pixels import LUMA, round_levels

DEGRADATIONS = ("bicubic", "real")
RESIZE_MODES = ("area", "bilinear", "bicubic")
KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")

Seed = Union[int, np.random.Generator]


@dataclass(frozen=True)
class DegradationConfig:
    """Every probability and range of the training degradation, in one place.

    Why these ranges are milder than Real-ESRGAN's: ribsr's models are 0.12 M-parameter, PSNR-oriented (L1)
    photo upscalers for camera and phone files, not a GAN restoring heavily damaged web images. A tiny model
    trained on extreme damage learns to smear everything; trained on the mild-to-moderate range that real
    camera JPEGs show (a pixel or two of optical/demosaic blur, a few levels of sensor noise, JPEG quality
    50-95), it removes that damage and still keeps the detail of clean-ish inputs. The low ends of the
    ranges reach almost-clean samples on purpose, so the model does not invent smoothing where none is needed.

    Measured, not guessed (0.3.0): the first ranges (blur to 2.5, noise to 10/255, JPEG from 50, second order
    half the time) trained an x2 model that smoothed clean inputs down to bicubic level (held-out examples
    32.57 dB vs bicubic 32.46) and whose degraded-Set5 validation fell after 25 minutes while its training
    loss kept falling: the training mass sat heavier than camera files. The ranges below trim the heavy end.

    Sigmas and the first-order resize are in HR pixels; second-order resize factors are relative to the
    target LR size. Noise sigmas are on the 0..1 scale (10/255 = ten 8-bit levels).
    """

    # ---- first order (on the HR image) -------------------------------------------------------------------
    #: odd kernel sides drawn uniformly from this range; a wide sigma cut by a small window gives the
    #: box-like, truncated kernels real optics and demosaicing also produce
    kernel_size_range: tuple[int, int] = (7, 21)
    #: probability of each kernel family (iso/aniso Gaussian, generalized Gaussian, plateau), summing to 1;
    #: mostly isotropic because defocus and anti-alias filters are; anisotropic ones stand for slight motion
    kernel_probs: tuple[float, ...] = (0.50, 0.20, 0.10, 0.05, 0.10, 0.05)
    #: Gaussian sigma (per axis for anisotropic kernels), HR pixels: 2.0 at most (1 LR px at x2)
    blur_sigma_first: tuple[float, float] = (0.2, 2.0)
    #: shape exponent of the generalized Gaussian exp(-0.5 * d^beta): < 1 peaky with long tails, > 1 flat-topped
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    #: exponent of the plateau kernel 1 / (1 + d^beta): a flat top with heavy tails (lens glow)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    #: probability that the first blur is a 2-D sinc (ideal circular low-pass) instead: ringing, as from sharpening
    sinc_prob_first: float = 0.1
    #: probability of resizing up / down / not at all in the first order
    resize_probs_first: tuple[float, float, float] = (0.2, 0.6, 0.2)
    #: factor range of the first-order resize (relative to the HR size): at most 2x coarser, 1.5x finer
    resize_range_first: tuple[float, float] = (0.5, 1.5)
    #: probability of adding noise in the first order; sigma ranges start near zero, so some samples stay clean
    noise_prob_first: float = 1.0
    #: Gaussian (vs Poisson) noise probability; grey (luminance-only, same in every channel) vs colour noise
    gaussian_noise_prob: float = 0.5
    grey_noise_prob: float = 0.4
    #: Gaussian noise sigma of the first order (0..1 scale): up to 8 levels at HR, which the downscale averages down
    noise_sigma_first: tuple[float, float] = (1 / 255, 8 / 255)
    #: Poisson (shot) noise as photons at full white, drawn log-uniformly: the std at mid-grey is sqrt(0.5/peak),
    #: 500 photons ≈ 8/255 and 30000 ≈ 1/255; darker pixels get less noise, as on a sensor
    poisson_peak_first: tuple[float, float] = (500.0, 30000.0)
    #: JPEG quality of the first order (only applied when a second order follows; otherwise the final JPEG is it)
    jpeg_prob_first: float = 0.9
    jpeg_quality_first: tuple[int, int] = (70, 95)

    # ---- second order (on a roughly LR-sized image) -------------------------------------------------------
    #: probability that the second blur → resize → noise → JPEG round happens at all (a re-saved, re-scaled file)
    second_order_prob: float = 0.4
    blur_prob_second: float = 0.8
    blur_sigma_second: tuple[float, float] = (0.2, 1.2)
    sinc_prob_second: float = 0.1
    resize_probs_second: tuple[float, float, float] = (0.3, 0.4, 0.3)
    #: factor relative to the target LR size; the final resize then brings it to that size exactly
    resize_range_second: tuple[float, float] = (0.75, 1.25)
    noise_prob_second: float = 0.8
    #: smaller than the first order: this noise lands near the LR resolution and is not averaged away
    noise_sigma_second: tuple[float, float] = (1 / 255, 6 / 255)
    poisson_peak_second: tuple[float, float] = (900.0, 30000.0)

    # ---- final step -------------------------------------------------------------------------------------
    #: probability of a 2-D sinc filter on the LR (ringing / over-sharpening halos), and its cutoff range
    #: in radians per pixel (pi = no filtering); sinc_cutoff_blur is the range of the sinc that replaces a blur
    #: kernel in either order (on the larger image, so it may cut lower)
    sinc_prob_final: float = 0.2
    sinc_cutoff_final: tuple[float, float] = (0.6 * math.pi, math.pi)
    sinc_cutoff_blur: tuple[float, float] = (math.pi / 3, math.pi)
    #: probability of the last JPEG, and its quality: camera and phone files are typically saved at 70-95,
    #: messaging apps and web re-saves lower
    jpeg_prob_final: float = 0.9
    jpeg_quality_final: tuple[int, int] = (60, 95)
    #: probability that the final [resize to LR + sinc] comes before the last JPEG (else after), as published
    resize_before_jpeg_prob: float = 0.5
    #: probability that a bilinear/bicubic downscale low-passes first (torch's antialias). The published
    #: pipelines never do, which aliases hard; cameras (optical low-pass, demosaic) and photo software mostly do
    antialias_prob: float = 0.7
    #: probability that a sample skips the pipeline and gets the clean benchmark LR (MATLAB bicubic, as the
    #: clean models train on): it keeps the model from taking every fine texture for damage. Measured (0.4.0,
    #: x4, 40 min, same ranges and lr): degraded-Set5 validation peaked at 28.53 dB with 0.2 against 28.50
    #: with 0 (runs/ribsr-s-real-x4 vs -v3), and the clean-input scores fell less.
    clean_prob: float = 0.2

    # ---- the single-pass camera model -------------------------------------------------------------------
    #: probability that a (non-clean) sample takes the camera model instead of the two-order chain above:
    #: optics blur → sampling to the LR grid (antialiased bicubic) → sensor noise *on the LR grid* → JPEG.
    #: Why: a photographer's file *is* the LR, so its sensor noise sits at its own pixel scale, while the
    #: chain's first-order noise lands on the HR and the final downscale averages most of it away (by 4 at x4).
    camera_prob: float = 0.5
    camera_blur_prob: float = 0.8
    #: Gaussian optics/demosaic blur in *LR* pixels (so the same softness at every scale)
    camera_blur_sigma_lr: tuple[float, float] = (0.1, 0.7)
    camera_noise_prob: float = 0.9
    #: sensor noise on the LR grid, 0..1 scale: Gaussian sigma, or Poisson photons at full white (log-uniform;
    #: 300 ≈ 10/255 at mid-grey); the JPEG quality and probability are the final step's
    camera_noise_sigma: tuple[float, float] = (1 / 255, 8 / 255)
    camera_poisson_peak: tuple[float, float] = (300.0, 30000.0)

    def __post_init__(self) -> None:
        if len(self.kernel_probs) != len(KERNEL_KINDS) or not math.isclose(sum(self.kernel_probs), 1.0):
            raise ValueError(f"kernel_probs needs {len(KERNEL_KINDS)} probabilities summing to 1")
        for name in ("resize_probs_first", "resize_probs_second"):
            if not math.isclose(sum(getattr(self, name)), 1.0):
                raise ValueError(f"{name} must sum to 1")
        lo, hi = self.kernel_size_range
        if lo < 3 or lo % 2 == 0 or hi % 2 == 0 or hi < lo:
            raise ValueError("kernel_size_range must be odd sides, 3 or more")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be a probability from 0 to 1, got {value:g}")
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ValueError(f"{f.name} must be a range (low, high), got {value}")


DEFAULT_CONFIG = DegradationConfig()


def degradation_config(overrides: Mapping[str, Any] | None = None) -> DegradationConfig:
    """`DEFAULT_CONFIG` with some fields replaced (`ribsr train --degradation-config FILE`): lists become
    tuples, ints become floats where the field is a float; an unknown field or a value of the wrong shape is a
    ValueError naming it, so a typo cannot silently train on the defaults."""
    if not overrides:
        return DEFAULT_CONFIG
    known = {f.name: f for f in fields(DegradationConfig)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown degradation setting {key!r} (the fields of DegradationConfig: "
                             f"{', '.join(known)})")
        default = getattr(DEFAULT_CONFIG, key)
        if isinstance(default, tuple):
            if (not isinstance(value, (list, tuple)) or len(value) != len(default)
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"degradation setting {key!r}: give a list of {len(default)} numbers")
            value = tuple(type(d)(v) for d, v in zip(default, value))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"degradation setting {key!r}: give a number, got {value!r}")
        else:
            value = type(default)(value)
        changes[key] = value
    return replace(DEFAULT_CONFIG, **changes)  # __post_init__ checks the probabilities that must sum to 1


def read_degradation_overrides(path: str | Path) -> dict[str, Any]:
    """The JSON object of a `--degradation-config` file, checked by building the config once (a ValueError
    says what is wrong; the caller names the file)."""
    try:
        overrides = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(exc.strerror or exc.__class__.__name__) from None
    except UnicodeDecodeError:
        raise ValueError("not a text file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(overrides, dict):
        raise ValueError("give a JSON object of DegradationConfig fields")
    degradation_config(overrides)
    return overrides


def as_generator(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int seed, or the Generator itself (its state then advances)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ---- kernels (numpy float64, normalised to sum 1) --------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(r, r, indexing="ij")  # (y, x)


def _mahalanobis_sq(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x on the kernel grid, Sigma = R diag(sx^2, sy^2) R^T rotated by theta."""
    y, x = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u = c * x + s * y  # coordinates along the kernel's own axes
    v = -s * x + c * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """(An)isotropic Gaussian exp(-d^2/2), d the Mahalanobis distance; isotropic when sigma_y is None."""
    d2 = _mahalanobis_sq(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = np.exp(-0.5 * d2)
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """exp(-0.5 * (d^2)^beta): beta = 1 is the Gaussian, smaller is peakier, larger is flatter-topped."""
    k = np.exp(-0.5 * _mahalanobis_sq(size, sigma_x, sigma_y, theta) ** beta)
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """1 / (1 + (d^2)^beta): flat near the centre, decaying only polynomially (a soft glow)."""
    k = 1.0 / (1.0 + _mahalanobis_sq(size, sigma_x, sigma_y, theta) ** beta)
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The ideal circular low-pass with cutoff `cutoff` rad/pixel, truncated to size x size and renormalised.

    Its impulse response is cutoff * J1(cutoff * r) / (2 pi r), with the limit cutoff^2 / (4 pi) at r = 0.
    """
    y, x = _grid(size)
    r = np.hypot(x, y)
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * r)).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(r > 0, cutoff * j1 / (2 * math.pi * r), cutoff**2 / (4 * math.pi))
    return k / k.sum()


def random_kernel(rng: np.random.Generator, cfg: DegradationConfig, sigma_range: tuple[float, float],
                  sinc_prob: float) -> np.ndarray:
    """One blur kernel: a sinc with probability `sinc_prob`, else a family drawn by cfg.kernel_probs."""
    lo, hi = cfg.kernel_size_range
    size = int(rng.integers(lo // 2, hi // 2 + 1)) * 2 + 1
    if rng.random() < sinc_prob:
        return sinc_kernel(size, float(rng.uniform(*cfg.sinc_cutoff_blur)))
    kind = KERNEL_KINDS[int(rng.choice(len(KERNEL_KINDS), p=np.asarray(cfg.kernel_probs)))]
    sx = float(rng.uniform(*sigma_range))
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sy = sx if iso else float(rng.uniform(*sigma_range))
    theta = 0.0 if iso else float(rng.uniform(-math.pi, math.pi))
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sx, sy, theta, float(rng.uniform(*cfg.generalized_beta)))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sx, sy, theta, float(rng.uniform(*cfg.plateau_beta)))
    return gaussian_kernel(size, sx, sy, theta)


# ---- operators on (N, C, H, W) float tensors in [0, 1] -----------------------------------------------------

def filter2d(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Correlate every channel with `kernel` (odd square), reflect-padded so the size is kept.

    Done by FFT: a 21x21 kernel on a 192x192 crop is ~4x faster than conv2d's single-channel path on a CPU
    core, and the pipeline's speed is the training step's data cost. Equal to conv2d to ~1e-6.
    """
    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    pad = k.shape[-1] // 2
    n, c, h, w = x.shape
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode=mode)[:, 0]
    size = tuple(padded.shape[-2:])
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(k.flip(0, 1), s=size)
    full = torch.fft.irfft2(spectrum, s=size)  # circular convolution; the valid part starts at 2 * pad
    return full[:, 2 * pad:2 * pad + h, 2 * pad:2 * pad + w].reshape(n, c, h, w).contiguous()


def resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """Resize to (h, w) with torch's area / bilinear / bicubic; antialias only matters when shrinking."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def gaussian_noise(x: torch.Tensor, sigma: float, rng: np.random.Generator, grey: bool = False) -> torch.Tensor:
    """Add N(0, sigma^2) noise, independent per channel, or one field shared by all channels when grey."""
    n, c, h, w = x.shape
    field = rng.standard_normal((n, 1 if grey else c, h, w), dtype=np.float32) * np.float32(sigma)
    return x + torch.from_numpy(field).to(device=x.device, dtype=x.dtype)


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def poisson_noise(x: torch.Tensor, peak: float, rng: np.random.Generator, grey: bool = False) -> torch.Tensor:
    """Shot noise: each value becomes Poisson(value * peak) / peak, so its variance is value / peak.

    Grey noise draws the counts on the luminance and adds the same deviation to every channel.
    """
    base = _luma(x) if grey else x
    lam = base.clamp(0, 1).detach().cpu().double().numpy() * peak
    counts = rng.poisson(lam).astype(np.float64) / peak
    deviation = torch.from_numpy(counts - lam / peak).to(device=x.device, dtype=x.dtype)
    return x + deviation


# ---- the two steps the training pipeline and the eval recipe share -----------------------------------------

def round_to_levels(levels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Values on the 0..255 scale → the uint8 a file stores: half away from zero (up, for these non-negative
    values, as a saver rounds), clipped. numpy arrays (the eval recipe, float64) and tensors (the training
    pipeline, on their own device and dtype) go through the same arithmetic, so both round one way."""
    if isinstance(levels, torch.Tensor):
        return (levels + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return round_levels(levels)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """An (H, W, C) uint8 image encoded and decoded by Pillow's libjpeg at `quality`: 4:2:0 chroma as cameras
    save colour, plain greyscale for one channel. Returns a read-only array of the same shape."""
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality), subsampling=2 if image.shape[2] == 3 else 0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue()))).reshape(image.shape)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels a file stores (`round_to_levels`)."""
    return round_to_levels(x.clamp(0, 1).mul(255))


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image of an (N, C, H, W) batch in [0, 1] through `jpeg_round_trip`, back as floats on x's device."""
    out = [torch.from_numpy(jpeg_round_trip(img.permute(1, 2, 0).numpy(), quality).copy()).permute(2, 0, 1)
           for img in to_uint8(x).cpu()]
    return torch.stack(out).to(device=x.device, dtype=x.dtype) / 255.0


# ---- the pipeline ----------------------------------------------------------------------------------------

def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_mode(rng: np.random.Generator) -> str:
    return RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]


def _random_resize(x: torch.Tensor, base: tuple[int, int], probs: tuple[float, float, float],
                   factor_range: tuple[float, float], rng: np.random.Generator, cfg: DegradationConfig) -> torch.Tensor:
    """Resize to base * f, f drawn above 1 (up), below 1 (down) or 1 (keep) with `probs`."""
    direction = int(rng.choice(3, p=np.asarray(probs)))
    lo, hi = factor_range
    factor = float(rng.uniform(1.0, hi)) if direction == 0 else float(rng.uniform(lo, 1.0)) if direction == 1 else 1.0
    mode = _random_mode(rng)
    antialias = bool(rng.random() < cfg.antialias_prob)
    size = (max(4, round(base[0] * factor)), max(4, round(base[1] * factor)))
    return resize(x, size, mode, antialias)


def _random_noise(x: torch.Tensor, sigma_range: tuple[float, float], peak_range: tuple[float, float],
                  rng: np.random.Generator, cfg: DegradationConfig) -> torch.Tensor:
    return _random_noise_level(x, sigma_range, peak_range, rng, cfg)[0]


def _random_noise_level(x: torch.Tensor, sigma_range: tuple[float, float], peak_range: tuple[float, float],
                        rng: np.random.Generator, cfg: DegradationConfig) -> tuple[torch.Tensor, float]:
    """(noisy x, the noise's 8-bit standard deviation in luminance at mid grey: `engine.damage.Damage.noise`)."""
    grey = bool(rng.random() < cfg.grey_noise_prob)
    if rng.random() < cfg.gaussian_noise_prob:
        sigma = float(rng.uniform(*sigma_range))
        return gaussian_noise(x, sigma, rng, grey), luma_noise(sigma * 255.0, grey)
    peak = _log_uniform(rng, *peak_range)
    return poisson_noise(x, peak, rng, grey), luma_noise(Damage.poisson_sigma(peak), grey)


def _camera(x: torch.Tensor, lr_size: tuple[int, int], scale: int, rng: np.random.Generator,
            cfg: DegradationConfig) -> tuple[torch.Tensor, Damage]:
    """The single-pass camera model (see `DegradationConfig.camera_prob`): blur, sample to LR, noise, JPEG;
    returns the LR and the damage it drew (what a damage-conditioned network is told)."""
    blur_lr, noise, quality_used = 0.0, 0.0, 100.0
    if rng.random() < cfg.camera_blur_prob:
        blur_lr = float(rng.uniform(*cfg.camera_blur_sigma_lr))
        sigma = blur_lr * scale  # in HR pixels
        x = filter2d(x, gaussian_kernel(2 * math.ceil(3 * sigma) + 1, sigma))
    x = resize(x, lr_size, "bicubic", antialias=True)
    if rng.random() < cfg.camera_noise_prob:
        x, noise = _random_noise_level(x, cfg.camera_noise_sigma, cfg.camera_poisson_peak, rng, cfg)
    quality = int(rng.integers(cfg.jpeg_quality_final[0], cfg.jpeg_quality_final[1] + 1))
    if rng.random() < cfg.jpeg_prob_final:
        x, quality_used = jpeg(x, quality), float(quality)
    return x, Damage(blur_lr, noise, quality_used)


def degrade(hr: torch.Tensor, scale: int, seed: Seed, cfg: DegradationConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """`degrade_with_damage` without the damage record (see there)."""
    return degrade_with_damage(hr, scale, seed, cfg)[0]


def degrade_with_damage(hr: torch.Tensor, scale: int, seed: Seed,
                        cfg: DegradationConfig = DEFAULT_CONFIG) -> tuple[torch.Tensor, Damage | None]:
    """(LR, the camera model's `Damage`, or None when the two-order chain ran: its damage is no three numbers).

    One HR image (C, H, W) or batch (N, C, H, W), float in [0, 1], → its degraded LR, float on 256 levels.

    The LR is (ceil(H/scale), ceil(W/scale)), the bicubic protocol's size. A batch shares one draw of
    every random choice; call per image (or `degrade_batch`) for independent samples. With cfg.camera_prob
    the single-pass camera model (`_camera`) runs instead; otherwise, in order:
      first order:  blur (kernel or sinc) → random resize → noise → [JPEG, only if a second order follows]
      second order (cfg.second_order_prob): blur → resize to LR size × f → noise
      final:        [resize to the LR size + optional sinc] and the last JPEG, in random order.
    """
    rng = as_generator(seed)
    single = hr.dim() == 3
    x = hr[None] if single else hr
    if not x.is_floating_point():
        raise TypeError(f"degrade takes a float tensor in [0, 1], got {x.dtype}")
    h, w = x.shape[-2:]
    lr_size = (math.ceil(h / scale), math.ceil(w / scale))
    if rng.random() < cfg.camera_prob:
        x, damage = _camera(x, lr_size, scale, rng, cfg)
        x = to_uint8(x).to(hr.dtype) / 255.0
        return (x[0] if single else x), damage

    x = filter2d(x, random_kernel(rng, cfg, cfg.blur_sigma_first, cfg.sinc_prob_first))
    x = _random_resize(x, (h, w), cfg.resize_probs_first, cfg.resize_range_first, rng, cfg)
    if rng.random() < cfg.noise_prob_first:
        x = _random_noise(x, cfg.noise_sigma_first, cfg.poisson_peak_first, rng, cfg)
    if rng.random() < cfg.second_order_prob:
        if rng.random() < cfg.jpeg_prob_first:
            x = jpeg(x, int(rng.integers(cfg.jpeg_quality_first[0], cfg.jpeg_quality_first[1] + 1)))
        if rng.random() < cfg.blur_prob_second:
            x = filter2d(x, random_kernel(rng, cfg, cfg.blur_sigma_second, cfg.sinc_prob_second))
        x = _random_resize(x, lr_size, cfg.resize_probs_second, cfg.resize_range_second, rng, cfg)
        if rng.random() < cfg.noise_prob_second:
            x = _random_noise(x, cfg.noise_sigma_second, cfg.poisson_peak_second, rng, cfg)

    # every draw of the final step happens up front, so the two orders consume the generator alike
    resize_first = rng.random() < cfg.resize_before_jpeg_prob
    mode, antialias = _random_mode(rng), bool(rng.random() < cfg.antialias_prob)
    sinc = None
    if rng.random() < cfg.sinc_prob_final:
        lo, hi = cfg.kernel_size_range
        sinc = sinc_kernel(int(rng.integers(lo // 2, hi // 2 + 1)) * 2 + 1, float(rng.uniform(*cfg.sinc_cutoff_final)))
    quality = int(rng.integers(cfg.jpeg_quality_final[0], cfg.jpeg_quality_final[1] + 1))
    use_jpeg = rng.random() < cfg.jpeg_prob_final

    def to_lr(t: torch.Tensor) -> torch.Tensor:
        t = resize(t, lr_size, mode, antialias)
        return filter2d(t, sinc) if sinc is not None else t

    if resize_first:
        x = to_lr(x)
    if use_jpeg:
        x = jpeg(x, quality)
    if not resize_first:
        x = to_lr(x)
    x = to_uint8(x).to(hr.dtype) / 255.0
    return (x[0] if single else x), None


def degrade_batch(hr_uint8: torch.Tensor, scale: int, rng: np.random.Generator,
                  cfg: DegradationConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """(N, C, H, W) uint8 HR crops → (N, C, h, w) uint8 LR, each crop with its own seed drawn from `rng`;
    a `cfg.clean_prob` share of them (drawn first) gets the clean MATLAB-bicubic LR instead.

    A per-sample seed keeps sample i reproducible on its own (the grid and the tests rely on it).
    """
    return degrade_batch_with_damage(hr_uint8, scale, rng, cfg)[0]


def degrade_batch_with_damage(hr_uint8: torch.Tensor, scale: int, rng: np.random.Generator,
                              cfg: DegradationConfig = DEFAULT_CONFIG) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`degrade_batch` and the (N, DAMAGE_CHANNELS) damage vectors of its samples (`Damage.vector`; a clean
    sample is all zeros), or None when any sample took the two-order chain (it has no such vector)."""
    from ribsr_cli.imaging.resize import imresize

    clean = rng.random(hr_uint8.shape[0]) < cfg.clean_prob
    seeds = rng.integers(0, 2**63 - 1, size=hr_uint8.shape[0])
    lrs, vectors = [], []
    for img, s, is_clean in zip(hr_uint8, seeds, clean):
        if is_clean:
            lrs.append(imresize(img[None], 1.0 / scale)[0])
            vectors.append(Damage().vector())
            continue
        lr, damage = degrade_with_damage(img.float() / 255.0, scale, int(s), cfg)
        lrs.append(to_uint8(lr))
        vectors.append(damage.vector() if damage is not None else None)
    known = all(v is not None for v in vectors)
    return torch.stack(lrs), (torch.tensor(vectors, dtype=torch.float32) if known else None)


# ---- the fixed evaluation recipe --------------------------------------------------------------------------

#: Gaussian blur on the HR image before downscaling (camera optics + demosaicing), HR pixels, 7x7 kernel
EVAL_BLUR_SIGMA = 0.8
#: Gaussian colour noise added to the LR, 0..1 scale (4 levels of 255: a clean-ish ISO 400-800 phone shot)
EVAL_NOISE_SIGMA = 4 / 255
#: JPEG quality of the saved LR (Pillow/libjpeg, 4:2:0 chroma subsampling, no optimisation flags)
EVAL_JPEG_QUALITY = 80


@dataclass(frozen=True)
class EvalRecipe:
    """The parameters of `degrade_for_eval`: `--degrade real` is the official one (the EVAL_* constants);
    `--degrade real:blur=1.2,noise=2,jpeg=90` scores another point of the camera-like family, so a model can
    be checked off the recipe it was chosen on. blur: Gaussian sigma in HR px (0 = none); noise: Gaussian
    colour sigma in 8-bit levels (0 = none); jpeg: quality 1-100 (0 = no JPEG)."""

    blur: float = EVAL_BLUR_SIGMA
    noise: float = EVAL_NOISE_SIGMA * 255
    jpeg: int = EVAL_JPEG_QUALITY

    @classmethod
    def parse(cls, mode: str) -> "EvalRecipe":
        """`real` or `real:key=value,...` (keys blur, noise, jpeg; the others keep the official values)."""
        kind, _, spec = mode.partition(":")
        if kind.lower() != "real":
            raise ValueError(f"{mode!r} is not a real-photo recipe (real or real:blur=S,noise=N,jpeg=Q)")
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, eq, text = item.partition("=")
            if not eq or key not in ("blur", "noise", "jpeg"):
                raise ValueError(f"{item!r}: give blur=SIGMA, noise=LEVELS or jpeg=QUALITY")
            try:
                values[key] = float(text)
            except ValueError:
                raise ValueError(f"{item!r}: {text!r} is not a number") from None
        # checked as floats first: int() of an infinite or NaN quality would raise a bare OverflowError/ValueError
        jpeg = values.get("jpeg", EVAL_JPEG_QUALITY)
        if not (0 <= values.get("blur", 0) <= 5 and 0 <= values.get("noise", 0) <= 50 and 0 <= jpeg <= 100
                and jpeg == int(jpeg)):
            raise ValueError(f"{mode!r}: blur 0-5 HR px, noise 0-50 levels, jpeg an integer 0-100 (0 = none)")
        return cls(**{k: (int(v) if k == "jpeg" else v) for k, v in values.items()})

    def damage(self, scale: int) -> Damage:
        """What this recipe does to an image at `scale`, in the units a damage-conditioned network is told
        (`engine.damage.Damage`): its blur in LR pixels, its colour noise in luminance, its JPEG quality."""
        return Damage(self.blur / scale, luma_noise(self.noise, grey=False), float(self.jpeg or 100))

    @property
    def name(self) -> str:
        """The `--degrade` spelling that reproduces this recipe ("real" for the official one)."""
        if self == OFFICIAL_RECIPE:
            return "real"
        return f"real:blur={self.blur:g},noise={self.noise:g},jpeg={self.jpeg}"

    def describe(self, downscale: str = "MATLAB-exact bicubic 1/scale") -> str:
        """The steps in words, for `ribsr eval`'s protocol record (`downscale`: how that step is worded)."""
        blur = (f"Gaussian blur sigma {self.blur:g} HR px (taps to 3 sigma, reflect), rounded to uint8"
                if self.blur else "no blur")
        noise = (f"Gaussian colour noise sigma {self.noise:g}/255 (numpy PCG64 seeded from the HR bytes, shape "
                 "and scale) rounded to uint8" if self.noise else "no noise")
        jpeg = f"Pillow JPEG quality {self.jpeg}, 4:2:0, decoded" if self.jpeg else "no JPEG"
        return f"{blur}; then {downscale}; then {noise}; then {jpeg}"


OFFICIAL_RECIPE = EvalRecipe()

#: (label, --degrade value): the official recipe, then softer-and-quieter, sharper-and-noisier, light,
#: moderate everything, and no blur at all (noise and JPEG only). The real models are chosen on their mean
#: (scripts/real_photo_recipes.py, README "Other recipes"), so that none is tuned to the one official point.
CHECK_RECIPES = [("official", "real"),
                 ("soft, quiet, q90", "real:blur=1.2,noise=2,jpeg=90"),
                 ("sharp, noisy, q70", "real:blur=0.5,noise=6,jpeg=70"),
                 ("light, q95", "real:blur=0.3,noise=3,jpeg=95"),
                 ("moderate, q85", "real:blur=1,noise=5,jpeg=85"),
                 ("no blur, q75", "real:blur=0,noise=4,jpeg=75")]


def _eval_seed(hr: np.ndarray, scale: int) -> int:
    """A seed from the image's bytes, shape and scale: the same image always gets the same noise."""
    digest = hashlib.sha256(f"ribsr-eval-degrade|{hr.shape}|{scale}|".encode() + hr.tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


def _separable_blur_np(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, C) float64 array, reflect-padded, as two 1-D passes of explicit sums.

    numpy's fixed summation order makes it bit-identical on every machine (a conv library might not be).
    """
    radius = math.ceil(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="reflect" if img.shape[axis] > radius else "edge")
        n = img.shape[axis]
        out = np.zeros_like(img)
        for i, t in enumerate(taps):
            out += t * np.take(padded, np.arange(i, i + n), axis=axis)
        img = out
    return img


def degrade_for_eval(hr_uint8: np.ndarray, scale: int, recipe: EvalRecipe = OFFICIAL_RECIPE) -> np.ndarray:
    """The documented real-photo recipe: HR (H, W[, C]) uint8 → LR uint8 of the bicubic protocol's size.
    (The official values are below; `recipe` may set others, and a zero skips its step.)

    1. mod-crop the HR to a multiple of `scale` (as the bicubic protocol does);
    2. Gaussian blur, sigma EVAL_BLUR_SIGMA = 0.8 HR px (7x7 taps, reflect borders), rounded to uint8;
    3. MATLAB-exact bicubic downscale by 1/scale (`imaging.resize.imresize`, antialiased, uint8 per pass);
    4. Gaussian colour noise, sigma EVAL_NOISE_SIGMA = 4/255, from a seed hashed from the HR bytes, shape and
       scale (numpy PCG64), rounded half up and clipped to uint8;
    5. JPEG at quality EVAL_JPEG_QUALITY = 80 with Pillow (4:2:0), decoded back.
    The values sit inside the training ranges (blur 0.2-2.0, second-order noise up to 6/255, JPEG 60-95).
    """
    from ribsr_cli.imaging.resize import imresize_np, modcrop

    if hr_uint8.dtype != np.uint8 or hr_uint8.ndim not in (2, 3):
        raise ValueError(f"degrade_for_eval takes an HxW or HxWxC uint8 image, got {hr_uint8.dtype} {hr_uint8.shape}")
    hr = np.ascontiguousarray(modcrop(hr_uint8, scale))
    work = hr[..., None] if hr.ndim == 2 else hr
    if recipe.blur:
        work = round_to_levels(_separable_blur_np(work.astype(np.float64), recipe.blur))
    out = imresize_np(work, 1.0 / scale)
    if recipe.noise:
        rng = np.random.default_rng(_eval_seed(hr, scale))
        out = round_to_levels(out.astype(np.float64) + rng.standard_normal(out.shape) * recipe.noise)
    if recipe.jpeg:
        out = jpeg_round_trip(out, recipe.jpeg)
    return out.copy() if hr_uint8.ndim == 3 else out.reshape(out.shape[:2]).copy()
