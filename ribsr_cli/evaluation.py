"""Benchmark evaluation without the CLI: find the images, make or load LR, upscale, score.

The protocol is the one behind every published SR table (see
`ribsr_cli.imaging.metrics` and `ribsr_cli.imaging.resize` for the details):
HR is mod-cropped to a multiple of the scale; LR is the official MATLAB-made
file when the set ships one, otherwise ribsr's pixel-identical
`bicubic_degrade`; SR is quantised to uint8 and scored by PSNR-Y / SSIM-Y with
a border of `scale` pixels cropped. Bicubic is always scored next to the other
methods and checked against the published bicubic numbers, which catches a
wrong dataset copy or protocol before anyone believes a model's score.

Methods are plain callables `(lr_uint8, scale) -> sr_uint8` on HxW or HxWxC
arrays, so a model (an `ribsr_cli.engine.runner.Upscaler`) plugs in like the
bicubic baseline.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from ribsr_cli import errors
from ribsr_cli.fileutil import atomic_file
from ribsr_cli.imaging.metrics import psnr, ssim
from ribsr_cli.imaging.resize import bicubic_degrade, imresize_np, modcrop
from ribsr_cli.imaging.io import is_scanned_image
from ribsr_cli.pixels import round_levels

Upscaler = Callable[[np.ndarray, int], np.ndarray]

BICUBIC = "bicubic"

# Bicubic PSNR-Y (dB) as published for the standard sets (e.g. the EDSR/RCAN tables).
PUBLISHED_BICUBIC: dict[str, dict[int, float]] = {
    "Set5": {2: 33.66, 3: 30.39, 4: 28.42},
    "Set14": {2: 30.24, 3: 27.55, 4: 26.00},
    "B100": {2: 29.56, 3: 27.21, 4: 25.96},
    "Urban100": {2: 26.88, 3: 24.46, 4: 23.14},
    "Manga109": {2: 30.80, 3: 26.95, 4: 24.89},
}
ALIASES = {"bsd100": "B100", "bsds100": "B100"} | {k.lower(): k for k in PUBLISHED_BICUBIC}
# How LR is made: "none" = the protocol (official files where shipped), "bicubic" = always ribsr's bicubic,
# "real" = degrade_for_eval's fixed camera-like recipe, which no published table uses ("real:blur=..,noise=..,
# jpeg=.." another point of it, `training.degrade.EvalRecipe`); `degrade_kind` tells them apart.
# Papers round to 0.01 dB and differ among themselves by about that much; more means a different protocol or data.
PUBLISHED_TOLERANCE_DB = 0.02


class EvalError(errors.UsageError):
    """A problem with the datasets or arguments, reported as one line (exit code 2 in the CLI)."""


def degrade_kind(degrade: str) -> str:
    """"none", "bicubic" or "real" (for "real" and every "real:..." recipe); EvalError for anything else,
    including a malformed recipe, so the message reaches the user before any image is read."""
    if degrade in ("none", "bicubic"):
        return degrade
    if degrade.partition(":")[0] == "real":
        from ribsr_cli.training.degrade import EvalRecipe  # torch: only when asked for

        try:
            EvalRecipe.parse(degrade)
        except ValueError as exc:
            raise EvalError(f"--degrade {degrade}: {exc}") from None
        return "real"
    raise EvalError(f"--degrade {degrade}: unknown; choose none, bicubic, real or real:blur=S,noise=N,jpeg=Q")


def canonical_name(name: str) -> str | None:
    """The published-table name for a dataset folder name (case-insensitive, B100 aliases), else None."""
    return ALIASES.get(name.lower())


def published_bicubic(dataset: str, scale: int) -> float | None:
    key = canonical_name(dataset)
    return PUBLISHED_BICUBIC[key].get(scale) if key else None


# ---- datasets ------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A benchmark set: HR images and, optionally, the official LR_bicubic/X{s}/{stem}x{s}.png files."""

    name: str
    root: Path
    hr_files: tuple[Path, ...]
    lr_root: Path | None

    def official_lr(self, hr_file: Path, scale: int) -> Path | None:
        if self.lr_root is None:
            return None
        path = self.lr_root / f"X{scale}" / f"{hr_file.stem}x{scale}{hr_file.suffix}"
        if path.is_file():
            return path
        png = path.with_suffix(".png")
        return png if png.is_file() else None


def _images_in(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir()
                        if p.is_file() and is_scanned_image(p)))


def discover_dataset(path: str | Path) -> Dataset:
    """A folder with HR/ (and maybe LR_bicubic/), that HR/ folder itself, or a plain folder of HR images."""
    root = Path(path)
    if not root.exists():
        raise EvalError(f"{path}: no such folder")
    if not root.is_dir():
        raise EvalError(f"{path}: not a folder (give a dataset folder with HR/ or with images)")
    if root.name == "HR" and not (root / "HR").is_dir():
        root = root.resolve().parent
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    files = _images_in(hr_dir)
    if not files:
        raise EvalError(f"{path}: no images found (expected an HR/ folder or image files)")
    lr_root = root / "LR_bicubic"
    return Dataset(name=root.resolve().name, root=root, hr_files=files, lr_root=lr_root if lr_root.is_dir() else None)


def load_image(path: Path) -> np.ndarray:
    """uint8 HxW for grayscale files, HxWx3 otherwise (palette/alpha dropped: SR sets are opaque)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise EvalError(f"{path}: {im.mode} images (16-bit/float) are not supported; benchmarks are 8-bit")
            if im.mode in ("L", "LA", "1") or (im.mode == "P" and _palette_is_grey(im)):
                return np.array(im.convert("L"))
            return np.array(im.convert("RGB"))
    except EvalError:
        raise
    except Exception as exc:  # unreadable or not an image: one clear line
        raise EvalError(f"{path}: cannot read image ({exc})") from None


def _palette_is_grey(im) -> bool:
    rgb = np.array(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def load_pair(
    dataset: Dataset, hr_file: Path, scale: int, *, use_official_lr: bool = True, degrade: str = "none"
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(lr, mod-cropped hr, lr came from an official file) for one image at one scale.

    `degrade` (see `degrade_kind`): "none" official LR where present, else bicubic; "bicubic" always ribsr's
    bicubic; "real" the fixed real-photo recipe `training.degrade.degrade_for_eval` (blur, bicubic, noise, JPEG),
    "real:blur=S,noise=N,jpeg=Q" another point of it.
    """
    kind = degrade_kind(degrade)
    hr = modcrop(load_image(hr_file), scale)
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise EvalError(f"{hr_file}: image smaller than the scale x{scale}")
    if kind == "real":
        from ribsr_cli.training.degrade import EvalRecipe, degrade_for_eval  # torch: only when asked for

        return degrade_for_eval(hr, scale, EvalRecipe.parse(degrade)), hr, False
    lr_file = dataset.official_lr(hr_file, scale) if use_official_lr and degrade == "none" else None
    if lr_file is None:
        return bicubic_degrade(hr, scale), hr, False
    lr = load_image(lr_file)
    _check_lr(lr_file, lr.shape[:2], hr_file, hr.shape[:2], scale)
    if lr.ndim != hr.ndim:
        kinds = ("grayscale" if lr.ndim == 2 else "RGB", "grayscale" if hr.ndim == 2 else "RGB")
        raise EvalError(f"{lr_file}: LR is {kinds[0]} but {hr_file.name} is {kinds[1]}; mismatched HR/LR pair")
    return lr, hr, True


def _check_lr(lr_file: Path, lr_hw: tuple[int, int], hr_file: Path, hr_hw: tuple[int, int], scale: int) -> None:
    want = (hr_hw[0] // scale, hr_hw[1] // scale)
    if tuple(lr_hw) != want:
        raise EvalError(f"{lr_file}: LR is {lr_hw[1]}x{lr_hw[0]}, but {hr_file.name} "
                        f"(mod-cropped {hr_hw[1]}x{hr_hw[0]}) needs {want[1]}x{want[0]} at x{scale}; mismatched HR/LR pair")


def check_pairs(dataset: Dataset, scales: Iterable[int]) -> None:
    """Fail fast on a wrongly sized official LR file, from image headers only (before a model is loaded)."""
    for hr_file in dataset.hr_files:
        for scale in scales:
            lr_file = dataset.official_lr(hr_file, scale)
            if lr_file is None:
                continue
            (w, h), (lw, lh) = _header_size(hr_file), _header_size(lr_file)
            _check_lr(lr_file, (lh, lw), hr_file, (h - h % scale, w - w % scale), scale)


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:
        raise EvalError(f"{path}: cannot read image ({exc})") from None


# ---- scoring --------------------------------------------------------------------


def bicubic_upscaler(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: MATLAB bicubic imresize of the uint8 LR by `scale` (rounded per pass)."""
    return imresize_np(lr, float(scale))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Quantise an SR result as saved images are (floats taken as 0..255): round half away from zero, clip."""
    if img.dtype == np.uint8:
        return img
    return round_levels(np.asarray(img, dtype=np.float64))


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float


@dataclass
class MethodResult:
    """One method on one dataset at one scale: mean scores and the per-image ones."""

    dataset: str
    scale: int
    method: str
    per_image: list[ImageScore] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return len(self.per_image)

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.per_image])) if self.per_image else math.nan

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.per_image])) if self.per_image else math.nan

    def as_dict(self, digits: int = 6) -> dict:
        """The JSON record; non-finite scores (identical images give inf dB) become null."""
        return {"dataset": self.dataset, "scale": self.scale, "method": self.method,
                "psnr_y": _num(self.psnr, digits), "ssim_y": _num(self.ssim, digits), "images": self.images,
                "seconds": round(self.seconds, 4),
                "per_image": [{"name": s.name, "psnr_y": _num(s.psnr, digits), "ssim_y": _num(s.ssim, digits)}
                              for s in self.per_image]}


def _num(x: float, digits: int) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


@dataclass
class EvalReport:
    results: list[MethodResult]
    warnings: list[str]
    lr_files_used: dict[str, int]  # "Set5 x2" -> how many LR images came from official files

    def result(self, dataset: str, scale: int, method: str) -> MethodResult | None:
        return next((r for r in self.results if (r.dataset, r.scale, r.method) == (dataset, scale, method)), None)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "method"


def _run_method(
    name: str, fn: Upscaler, lr: np.ndarray, scale: int, hr: np.ndarray, image: str
) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    sr = fn(lr, scale)
    seconds = time.perf_counter() - start
    sr = to_uint8(np.asarray(sr))
    if sr.shape != hr.shape and sr.size == hr.size and sr.shape[:2] == hr.shape[:2]:
        sr = sr.reshape(hr.shape)  # HxWx1 vs HxW
    if sr.shape != hr.shape:
        raise RuntimeError(f"{name} returned shape {sr.shape} for {image} at x{scale}, expected {hr.shape}")
    return sr, seconds


def evaluate(
    datasets: Iterable[Dataset],
    scales: Iterable[int],
    methods: Mapping[str, Upscaler] | None = None,
    *,
    crop_border: int | None = None,
    test_y: bool = True,
    use_official_lr: bool = True,
    degrade: str = "none",
    save_dir: Path | None = None,
    on_image: Callable[[Dataset, int, str, dict[str, ImageScore]], None] | None = None,
) -> EvalReport:
    """Score every method (bicubic always included, first) on every dataset x scale.

    crop_border None means the standard `scale` pixels. `degrade` picks how LR is made (see `load_pair`); the
    same LR feeds every method, bicubic included, and the published-bicubic check runs only for bicubic LR.
    `on_image` is called after each image with its scores per method (progress, verbose output).
    `seconds` is the time spent inside each method's callable only.
    """
    all_methods: dict[str, Upscaler] = {BICUBIC: bicubic_upscaler}
    all_methods.update(methods or {})
    results: list[MethodResult] = []
    warnings: list[str] = []
    lr_files_used: dict[str, int] = {}
    for ds in datasets:
        for scale in scales:
            border = scale if crop_border is None else crop_border
            block = {name: MethodResult(ds.name, scale, name) for name in all_methods}
            used = 0
            for hr_file in ds.hr_files:
                lr, hr, official = load_pair(ds, hr_file, scale, use_official_lr=use_official_lr, degrade=degrade)
                used += official
                scores: dict[str, ImageScore] = {}
                for name, fn in all_methods.items():
                    sr, seconds = _run_method(name, fn, lr, scale, hr, hr_file.name)
                    score = ImageScore(hr_file.stem, psnr(sr, hr, border, test_y), ssim(sr, hr, border, test_y))
                    block[name].per_image.append(score)
                    block[name].seconds += seconds
                    scores[name] = score
                    if save_dir is not None:
                        _save(sr, Path(save_dir) / ds.name / f"x{scale}" / _safe_name(name) / f"{hr_file.stem}.png")
                if on_image is not None:
                    on_image(ds, scale, hr_file.stem, scores)
            lr_files_used[f"{ds.name} x{scale}"] = used
            if 0 < used < len(ds.hr_files):
                warnings.append(f"{ds.name} x{scale}: only {used} of {len(ds.hr_files)} official LR files found; "
                                "the rest were made by ribsr's bicubic_degrade")
            results.extend(block.values())
            if test_y and border == scale and degrade_kind(degrade) != "real":
                warning = check_published(block[BICUBIC])
                if warning:
                    warnings.append(warning)
    return EvalReport(results, warnings, lr_files_used)


def check_published(bicubic: MethodResult) -> str | None:
    """A warning when measured bicubic PSNR-Y is off the published number by more than the tolerance."""
    ref = published_bicubic(bicubic.dataset, bicubic.scale)
    if ref is None or not math.isfinite(bicubic.psnr):
        return None
    diff = bicubic.psnr - ref
    if abs(diff) <= PUBLISHED_TOLERANCE_DB:
        return None
    return (f"{bicubic.dataset} x{bicubic.scale}: bicubic PSNR-Y {bicubic.psnr:.3f} dB differs from the published "
            f"{ref:.2f} dB by {diff:+.3f} dB (more than {PUBLISHED_TOLERANCE_DB}); check the dataset copy and LR files")


def _save(img: np.ndarray, path: Path) -> None:
    """Write an SR result as PNG, whole or not at all (ribsr_cli.fileutil)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        Image.fromarray(img).save(f, "PNG")
