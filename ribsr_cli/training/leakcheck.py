"""Refuse training photos whose content is a benchmark image (or contains one).

Training on a photo that Set5/Set14/B100/Urban100/Manga109/DIV2K-valid images
were cut or shrunk from would inflate every PSNR this project reports, so
`prepare` runs every photo through `LeakChecker.check` first.

How: greyscale normalised cross-correlation (NCC), which ignores brightness and
contrast changes and survives JPEG re-encoding and resampling. Two directions:

* benchmark inside photo - the benchmark is the whole photo downscaled, or a
  crop of it at any scale from `min_scale` (0.5: a crop of the original at twice
  the prepared size) up to "fills the photo";
* photo inside benchmark - the photo is itself a crop of a benchmark image
  (down to 1/4 of the photo's size).

Each is a coarse-to-fine search. Coarse: the template is shrunk to ~32 px and
slid over the target at quarter-octave scale steps, by FFT against a cached
pyramid of the target (one photo's pyramid serves every benchmark), on Sobel
gradients - plain intensities let any two smooth skies correlate, gradients
don't. Fine: the best few positions are re-scored with a ~128 px template, a
margin and 1/32-octave scale steps, on a difference-of-Gaussians band (edges and
texture, no shading). Only the fine score decides.

Calibration (this project's 83 photos, halved, against Set5+Set14): unrelated
photos score at most 0.63; a benchmark pasted 1.5x or 0.5x into a photo, shown
whole at 3x, or shrunk, cropped and re-JPEG'd (q70-q90) scores 0.92-1.00. The
threshold is 0.85. About 0.3-0.5 s per 2 MP photo against 19 benchmarks on one
core. Mirrored or rotated copies are not searched (benchmarks aren't made so).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ribsr_cli.imaging.io import is_scanned_image
from ribsr_cli.paths import benchmarks_dir

COARSE_SIDE = 32  # template long side for the sliding search, px
FINE_SIDE = 128  # template long side for verification, px
MIN_SIDE = 6  # a template thinner than this says nothing
GRAD_MIN_STD = 1.0  # coarse windows with gradients flatter than this (grey levels/px) score 0
MAX_VERIFY = 3  # coarse candidates re-scored per (photo, benchmark, direction)
COARSE_THRESHOLD = 0.3  # gradient NCC; true matches 9% off-scale still score ~0.4+
FINE_THRESHOLD = 0.85  # see the calibration above
BAND_SIGMAS = (0.8, 3.0)  # DoG band for the fine score, in fine-scale px
BAND_MIN_STD = 1.0
# "photo inside benchmark" is searched down to a footprint of 1/4 of the photo's size and 96 px:
# a training photo that is a >4x blow-up of a thumbnail-sized benchmark crop is not a real risk,
# and tiny footprints of smooth photos are where chance matches live.
REVERSE_MIN_SCALE = 0.25
REVERSE_MIN_SIDE = 96


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: pocketfft is quick on those lengths."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


class _Level:
    """Arrays (C, H, W) prepared for NCC: FFT and per-channel integral images, built once.

    NCC over several channels sums correlations and variances across them, so
    the (dx, dy) gradient pair is scored as one vector field.
    """

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = (arr if arr.ndim == 3 else arr[None]).astype(np.float32, copy=False)
        self.h, self.w = self.arr.shape[1:]
        self.shape = (_fast_len(self.h), _fast_len(self.w))
        self._fft: np.ndarray | None = None
        a = self.arr.astype(np.float64)
        self._s1 = np.zeros((len(a), self.h + 1, self.w + 1))
        self._s2 = np.zeros((len(a), self.h + 1, self.w + 1))
        self._s1[:, 1:, 1:] = a.cumsum(1).cumsum(2)
        self._s2[:, 1:, 1:] = (a * a).cumsum(1).cumsum(2)

    @staticmethod
    def _box(s: np.ndarray, h: int, w: int) -> np.ndarray:
        return s[:, h:, w:] - s[:, :-h, w:] - s[:, h:, :-w] + s[:, :-h, :-w]

    def ncc(self, tmpl: np.ndarray, min_std: float) -> np.ndarray:
        """NCC of `tmpl` at every position where it fits wholly inside; windows (or a template)
        with a standard deviation under `min_std` score 0: flat areas match anything."""
        t = (tmpl if tmpl.ndim == 3 else tmpl[None]).astype(np.float32)
        h, w = t.shape[1:]
        t0 = t - t.mean(axis=(1, 2), keepdims=True)
        tnorm = float(np.sqrt((t0.astype(np.float64) ** 2).sum()))
        n = h * w
        if h > self.h or w > self.w or tnorm < min_std * math.sqrt(n * len(t)):
            return np.zeros((1, 1), np.float32)
        if self._fft is None:
            self._fft = np.fft.rfft2(self.arr, s=self.shape)
        prod = (self._fft * np.conj(np.fft.rfft2(t0, s=self.shape))).sum(axis=0)
        corr = np.fft.irfft2(prod, s=self.shape)[: self.h - h + 1, : self.w - w + 1]
        s1 = self._box(self._s1, h, w)
        var = (self._box(self._s2, h, w) - s1 * s1 / n).sum(axis=0)  # n * summed channel variances
        ok = var > n * len(t) * min_std**2
        out = np.zeros(corr.shape, np.float32)
        out[ok] = corr[ok] / (np.sqrt(var[ok]) * tnorm)
        return out


def _gradients(a: np.ndarray) -> np.ndarray:
    """Sobel (dx, dy) of `a`, both (H-2, W-2): shading becomes near-constant and so carries no
    weight, and the [1, 2, 1] smoothing keeps the score tolerant of a few percent scale error."""
    sx = a[:, 2:] - a[:, :-2]
    sy = a[2:, :] - a[:-2, :]
    return np.stack([sx[:-2] + 2 * sx[1:-1] + sx[2:], sy[:, :-2] + 2 * sy[:, 1:-1] + sy[:, 2:]])


class _Gray:
    """A greyscale image with a box-filtered octave chain, for cheap good resizes and NCC levels."""

    def __init__(self, img: Image.Image) -> None:
        self.img = img.convert("L")
        self.w, self.h = self.img.size
        self._octaves = [self.img]
        self._levels: dict[int, _Level] = {}

    def _octave_for(self, scale: float) -> Image.Image:
        """The smallest octave (halving) still at least `scale` of full size."""
        o = max(0, int(math.floor(math.log2(1.0 / scale)))) if scale < 1 else 0
        while len(self._octaves) <= o:
            last = self._octaves[-1]
            if min(last.size) < 4:
                break
            self._octaves.append(last.reduce(2))
        return self._octaves[min(o, len(self._octaves) - 1)]

    def resized(self, w: int, h: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """`box` (full-size coordinates; whole image if None) resized to (w, h), as float32."""
        x0, y0, x1, y1 = box or (0.0, 0.0, float(self.w), float(self.h))
        src = self._octave_for(min(w / (x1 - x0), h / (y1 - y0)))
        sx, sy = src.width / self.w, src.height / self.h
        out = src.resize((w, h), Image.Resampling.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        return np.asarray(out, dtype=np.float32)

    def level(self, k: int) -> _Level:
        """Gradients of this image at 2^(-k/4) of its size, ready for NCC (cached)."""
        if k not in self._levels:
            f = 2.0 ** (-k / 4)
            self._levels[k] = _Level(_gradients(self.resized(max(1, round(self.w * f)), max(1, round(self.h * f)))))
        return self._levels[k]


@dataclass(frozen=True)
class LeakMatch:
    """Where a benchmark image was found: `score` is the fine NCC (1.0 = identical)."""

    benchmark: Path
    score: float
    direction: str  # "benchmark in photo" or "photo in benchmark"
    scale: float  # footprint size / template size
    x: float  # footprint's top-left corner in the target image, px
    y: float

    def describe(self) -> str:
        name = "/".join(self.benchmark.parts[-3:])
        return (f"{name} (NCC {self.score:.3f}, {self.direction}, scale {self.scale:.2f}, "
                f"at x={self.x:.0f} y={self.y:.0f})")


def _search(tmpl: _Gray, tgt: _Gray, scales: Iterable[float]) -> tuple[float, float, float, float] | None:
    """Best (fine NCC, scale, x, y) of `tmpl` shrunk by each scale inside `tgt`; None if no candidate."""
    cands = []
    for r in scales:
        fw, fh = r * tmpl.w, r * tmpl.h
        if fw > tgt.w + 1 or fh > tgt.h + 1:
            continue
        k = max(0, round(4 * math.log2(max(fw, fh) / COARSE_SIDE)))
        lvl = tgt.level(k)
        fx, fy = (lvl.w + 2) / tgt.w, (lvl.h + 2) / tgt.h
        tw, th = min(lvl.w + 2, max(1, round(fw * fx))), min(lvl.h + 2, max(1, round(fh * fy)))
        if min(tw, th) < MIN_SIDE:
            continue
        m = lvl.ncc(_gradients(tmpl.resized(tw, th)), GRAD_MIN_STD)
        i = int(np.argmax(m))
        if m.flat[i] >= COARSE_THRESHOLD:
            y, x = divmod(i, m.shape[1])
            cands.append((float(m.flat[i]), r, x / fx, y / fy))
    best = None
    for _, r, x, y in sorted(cands, reverse=True)[:MAX_VERIFY]:
        hit = _verify(tmpl, tgt, r, x, y)
        if best is None or hit[0] > best[0]:
            best = hit
    return best


def _gauss1d(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    k = _gauss1d(sigma)
    r = len(k) // 2
    p = np.pad(a, r, mode="reflect")
    p = np.lib.stride_tricks.sliding_window_view(p, len(k), axis=0) @ k
    return np.lib.stride_tricks.sliding_window_view(p, len(k), axis=1) @ k


def _bandpass(a: np.ndarray) -> np.ndarray:
    """Difference of Gaussians: keeps edges and texture, drops the smooth shading that makes
    any two skies or blurred backgrounds correlate."""
    return _blur(a, BAND_SIGMAS[0]) - _blur(a, BAND_SIGMAS[1])


def _verify(tmpl: _Gray, tgt: _Gray, r: float, x: float, y: float) -> tuple[float, float, float, float]:
    """Re-score a coarse hit: band-passed NCC, ~FINE_SIDE template, a margin, 1/16 then 1/32-octave steps.

    The template's band-pass is computed on the template alone, so its outer
    `b` pixels (where the filter saw padding) are cut off before matching.
    """
    fw, fh = r * tmpl.w, r * tmpl.h
    s = min(1.0, FINE_SIDE / max(fw, fh))  # target px -> fine px
    margin = 0.12 * max(fw, fh) + 2.0 / s
    x0, y0 = max(0.0, x - margin), max(0.0, y - margin)
    x1, y1 = min(float(tgt.w), x + fw + margin), min(float(tgt.h), y + fh + margin)
    region = _Level(_bandpass(tgt.resized(max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s)),
                                          (x0, y0, x1, y1))))
    b = int(math.ceil(2 * BAND_SIGMAS[1]))
    best = (-1.0, r, x, y)

    def try_scale(q: float) -> None:
        nonlocal best
        tw, th = round(fw * q * s), round(fh * q * s)
        if min(tw, th) < MIN_SIDE + 2 * b or tw > region.w or th > region.h:
            return
        m = region.ncc(_bandpass(tmpl.resized(tw, th))[b:-b, b:-b], BAND_MIN_STD)
        i = int(np.argmax(m))
        if m.flat[i] > best[0]:
            yy, xx = divmod(i, m.shape[1])
            best = (float(m.flat[i]), r * q, x0 + (xx - b) / s, y0 + (yy - b) / s)

    for j in range(-2, 3):  # the coarse grid is a quarter octave: +-1/8 covers it
        try_scale(2.0 ** (j / 16))
    q = best[1] / r
    for step in (2.0 ** (-1 / 32), 2.0 ** (1 / 32)):  # then halve the step around the best
        try_scale(q * step)
    return best


def benchmark_files(folder: Path) -> list[Path]:
    """Images directly in `folder`, or in `folder/HR` when it holds none (a set's root was given)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_scanned_image(p))
    if not files and (folder / "HR").is_dir():
        return benchmark_files(folder / "HR")
    return files


def default_benchmark_dirs() -> list[Path]:
    """The shared benchmark sets' HR folders (Set5, Set14), where present."""
    return sorted(p for p in benchmarks_dir().glob("*/HR") if p.is_dir())


def _as_gray(image: np.ndarray | Image.Image | str | Path) -> _Gray:
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return _Gray(ImageOps.exif_transpose(im).convert("L"))
    if isinstance(image, np.ndarray):
        return _Gray(Image.fromarray(image))
    return _Gray(image)


class LeakChecker:
    """Holds the benchmark images (greyscale) and checks photos against all of them."""

    def __init__(self, benchmark_dirs: Iterable[str | Path] = (), *, files: Sequence[str | Path] = (),
                 min_scale: float = 0.5, threshold: float = FINE_THRESHOLD) -> None:
        paths = [p for d in benchmark_dirs for p in benchmark_files(Path(d))] + [Path(f) for f in files]
        self.benchmarks = [(p, _as_gray(p)) for p in paths]
        self.min_scale = min_scale
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.benchmarks)

    def _scales(self, tmpl: _Gray, tgt: _Gray, lowest: float) -> list[float]:
        """Quarter-octave steps down from 'fills the target', while >= `lowest`."""
        r = min(tgt.w / tmpl.w, tgt.h / tmpl.h)
        out: list[float] = []
        while r >= lowest * 2.0 ** -0.2 and len(out) < 40:
            out.append(r)
            r *= 2.0 ** -0.25
        return out

    def best_matches(self, image: np.ndarray | Image.Image | str | Path) -> list[LeakMatch]:
        """Every benchmark's best fine score against `image`, highest first (for diagnostics)."""
        photo = _as_gray(image)
        out = []
        for path, bench in self.benchmarks:
            found = []
            hit = _search(bench, photo, self._scales(bench, photo, self.min_scale))
            if hit:
                found.append(LeakMatch(path, hit[0], "benchmark in photo", *hit[1:]))
            lowest = max(REVERSE_MIN_SCALE, REVERSE_MIN_SIDE / max(photo.w, photo.h))
            hit = _search(photo, bench, self._scales(photo, bench, lowest))
            if hit:
                found.append(LeakMatch(path, hit[0], "photo in benchmark", *hit[1:]))
            if found:
                out.append(max(found, key=lambda m: m.score))
        return sorted(out, key=lambda m: -m.score)

    def check(self, image: np.ndarray | Image.Image | str | Path) -> LeakMatch | None:
        """The best match at or above the threshold, or None when `image` is clean."""
        matches = self.best_matches(image)
        return matches[0] if matches and matches[0].score >= self.threshold else None


def main(argv: Iterable[str] | None = None) -> int:
    """Check photos from the command line; exit 1 when any matches a benchmark."""
    ap = argparse.ArgumentParser(prog="python -m ribsr_cli.training.leakcheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+", type=Path, help="images, checked at their own size "
                    "(prepare checks photos after halving them)")
    ap.add_argument("--benchmarks", type=Path, action="append", default=[], metavar="DIR",
                    help="benchmark HR folder (repeatable); the shared Set5/Set14 HR are always added")
    ap.add_argument("--no-default-benchmarks", action="store_true")
    ap.add_argument("--scores", action="store_true", help="print each photo's three best scores")
    args = ap.parse_args(None if argv is None else list(argv))
    dirs = ([] if args.no_default_benchmarks else default_benchmark_dirs()) + args.benchmarks
    checker = LeakChecker(dirs)
    leaks = 0
    for photo in args.photos:
        matches = checker.best_matches(photo)
        leak = bool(matches) and matches[0].score >= checker.threshold
        leaks += leak
        print(f"{'LEAK' if leak else 'ok  '} {photo}")
        if args.scores or leak:
            for m in matches[: 3 if args.scores else 1]:
                print(f"     {m.describe()}")
    print(f"{leaks} of {len(args.photos)} photos match one of {len(checker)} benchmark images")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
