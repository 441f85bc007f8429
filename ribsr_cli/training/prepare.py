"""Prepare training photos: decode, halve with Lanczos, refuse benchmark look-alikes, pack into an HR pool.

`prepare` decodes the verified photos (`training.fetch`), shrinks them (see `load_photo` for why), runs each
through the benchmark leak check (`training.leakcheck`) and packs the rest into the pool `training.pool`
reads: one flat uint8 file plus a JSON index, written so that the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ribsr_cli.fileutil import atomic_file, atomic_write_text, sha256_file
from ribsr_cli.imaging.io import is_scanned_image
from ribsr_cli.training.leakcheck import LeakChecker, default_benchmark_dirs
from ribsr_cli.training.manifest import read_manifest
from ribsr_cli.training.pool import INDEX_FILE, POOL_FILE, POOL_FORMAT, PoolEntry
from ribsr_cli.training.progress import Log, to_stderr


def load_photo(path: Path, downscale: int = 2) -> np.ndarray:
    """Decode to RGB uint8 (EXIF orientation applied) and shrink by `downscale` with Lanczos.

    Why shrink at all: 75 of the 83 sources are JPEGs of quality ~70 to 100 (a
    quarter at 75), half with 4:2:0 chroma. At full size they carry 8x8 block
    edges, ringing, half-resolution chroma and demosaicing/sensor noise; a model trained to
    reproduce those as "HR" learns to hallucinate them. Halving the size puts
    every one of those below the new Nyquist limit, where a good low-pass
    filter removes them.

    Why Lanczos rather than `Image.reduce(2)` (a 2x2 box): measured on sinusoids,
    the box keeps 0.59 of a 0.3 cycle/px input and 0.38 at 0.375 (the third
    harmonic of an 8-px JPEG grid) - all of it aliased to a false lower
    frequency - and is already down to 0.81 at 80% of the new Nyquist. Pillow's
    Lanczos (3 lobes, widened by the factor) stays at 0.99-1.01 up to 60% of the
    new Nyquist, 0.82 at 80%, and lets through 0.18 at 0.3 and 0.01 from 0.35
    cycle/px on: sharp targets with next to no aliasing; its slight ringing is
    far below what JPEG adds. On this set's JPEGs the mean 8-px block-edge
    excess (`blockiness`: step size on the grid / elsewhere) of 1.53 drops to
    1.10 with Lanczos (4-px grid after halving) against 1.13 with the box.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as src:
        im: Image.Image = ImageOps.exif_transpose(src)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: Pillow's convert("RGB") would clip, so scale to 8 bit first.
            arr16 = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr16 / 257.0 + 0.5, 0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Transparent pixels composite onto mid-grey rather than undefined colour.
            base = Image.new("RGBA", im.size, (128, 128, 128, 255))
            im = Image.alpha_composite(base, im.convert("RGBA"))
        im = im.convert("RGB")
        if downscale > 1:
            w, h = im.size
            w2, h2 = w // downscale, h // downscale
            im = im.crop((0, 0, w2 * downscale, h2 * downscale)).resize((w2, h2), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def blockiness(gray: np.ndarray, period: int) -> float:
    """Mean |step| across `period`-aligned pixel boundaries over the mean elsewhere (1.0 = no grid).

    JPEG's 8x8 blocks show up as a value above 1 at period 8 (period 4 after halving).
    """
    g = gray.astype(np.float32)
    dx = np.abs(np.diff(g, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(g, axis=0)).mean(axis=1)
    ratios = []
    for d in (dx, dy):
        n = len(d) // period * period
        prof = d[:n].reshape(-1, period).mean(axis=0)
        ratios.append(prof[period - 1] / max(1e-6, float(np.delete(prof, period - 1).mean())))
    return float(np.mean(ratios))


def find_photos(photos_dir: Path) -> list[Path]:
    """Image files under `photos_dir`, sorted, as the fallback when no manifest is given."""
    return sorted(p for p in Path(photos_dir).rglob("*")
                  if p.is_file() and is_scanned_image(p))


@dataclass
class PrepareReport:
    """What `prepare` wrote and what it skipped (missing, wrong hash, undecodable, benchmark leak)."""

    images: list[PoolEntry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def megapixels(self) -> float:
        return sum(e["height"] * e["width"] for e in self.images) / 1e6

    def summary(self) -> str:
        nbytes = 3 * sum(e["height"] * e["width"] for e in self.images)
        lines = [f"prepared {len(self.images)} images, {self.megapixels:.1f} MP, "
                 f"{nbytes / 2**20:.1f} MiB in {self.seconds:.1f} s"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()] or ["skipped: none"]
        return "\n".join(lines)


def prepare(photos_dir: str | Path, out_dir: str | Path, downscale: int = 2,
            benchmark_dirs: Sequence[str | Path] | None = None, *,
            manifest: str | Path | None = None, log: Log = to_stderr) -> PrepareReport:
    """Pack verified, downscaled, leak-checked photos into ``out_dir/hr.u8`` + ``index.json``.

    `manifest` given: only its files are used, and only if their sha256 matches
    (a wrong or missing file is skipped with the reason). `manifest` None: every
    image under `photos_dir` is used. `benchmark_dirs` None means the shared
    Set5/Set14 HR folders; pass a list to choose (``[]`` turns the check off,
    which only tests should do). Images are written back to back (HWC, uint8) in
    name order, so the same inputs give the same file; the pool and index are
    written under temporary names and renamed at the end (pool first), so a
    trainer that has the old pool memory-mapped keeps reading a whole file.
    """
    t0 = time.perf_counter()
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    if downscale < 1:
        raise ValueError("downscale must be >= 1")
    report = PrepareReport()
    if manifest is not None:
        entries = [(photos_dir / s.file, s.file, s.sha256) for s in read_manifest(Path(manifest))]
    else:
        entries = [(p, p.relative_to(photos_dir).as_posix(), "") for p in find_photos(photos_dir)]
    dirs = default_benchmark_dirs() if benchmark_dirs is None else [Path(d) for d in benchmark_dirs]
    checker = LeakChecker(dirs) if dirs else None
    if checker is None:
        log("warning: no benchmark folders given: the benchmark leak check is OFF")
    else:
        log(f"leak check against {len(checker)} benchmark images from {len(dirs)} folders")
    out_dir.mkdir(parents=True, exist_ok=True)
    offset = 0
    with atomic_file(out_dir / POOL_FILE) as pool:  # a temporary name of its own until the loop ends
        for path, name, want in sorted(entries, key=lambda e: e[1]):
            if not path.is_file():
                report.skipped[name] = "missing (run scripts/get_training_photos.sh)"
                log(f"skip {name}: missing")
                continue
            digest = sha256_file(path)
            if want and digest != want:
                report.skipped[name] = f"sha256 mismatch: got {digest[:16]}…, manifest says {want[:16]}…"
                log(f"skip {name}: {report.skipped[name]}")
                continue
            try:
                arr = load_photo(path, downscale)
            except (OSError, ValueError) as exc:
                report.skipped[name] = f"cannot decode: {exc}"
                log(f"skip {name}: {report.skipped[name]}")
                continue
            if checker is not None:
                match = checker.check(arr)
                if match is not None:
                    report.skipped[name] = f"matches benchmark image {match.describe()}"
                    log(f"REFUSED {name}: {report.skipped[name]}")
                    continue
            h, w = arr.shape[:2]
            pool.write(np.ascontiguousarray(arr).tobytes())
            report.images.append({"name": name, "offset": offset, "height": h, "width": w, "sha256": digest})
            offset += h * w * 3
            log(f"ok {name}: {w}x{h}")
    report.seconds = time.perf_counter() - t0
    index = {
        "format": POOL_FORMAT,
        "dtype": "uint8",
        "layout": "HWC RGB, images back to back; offset in bytes",
        "downscale": downscale,
        "filter": "lanczos" if downscale > 1 else "none",
        "total_bytes": offset,
        "benchmarks_checked": [str(d) for d in dirs],
        "images": report.images,
        "skipped": report.skipped,
    }
    atomic_write_text(out_dir / INDEX_FILE, json.dumps(index, indent=1) + "\n")
    return report
