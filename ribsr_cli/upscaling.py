"""Batch upscaling without the CLI: which files, where their outputs go, and one file's journey.

Safety rules live here, in one place: inputs are never written; an output path
must resolve inside the output folder; two inputs never share an output;
existing outputs are skipped unless asked; every write is atomic (io layer);
each file fails alone with a one-line reason.
"""

from __future__ import annotations

import glob
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ribsr_cli.errors import UsageError  # planning's usage errors (re-exported for ray_upscale)
from ribsr_cli.imaging.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
    is_image_path,
    is_scanned_image,
    output_format_for,
    read_image,
    write_image,
)
from ribsr_cli.imaging.io_write import normalise_format
from ribsr_cli.imaging.lanczos import final_size, resize_to
from ribsr_cli.pixels import grey_like, to_rgb

if TYPE_CHECKING:
    from ribsr_cli.engine.runner import Upscaler

GLOB_CHARS = set("*?[")
SUPPORTED_TYPES = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))  # for "not a supported image type"
FLAG_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}  # `--overwrite true` makes "true" an input


@dataclass
class Job:
    source: Path
    output: Path | None
    status: str = "pending"  # pending | done | skipped | failed | interrupted (Ctrl-C while it ran)
    reason: str = ""
    in_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)  # attention kernels that actually ran on this file
    tile: int | None = None  # tile side that ran (LR px; 0: whole image), after any out-of-memory halving
    damage: str | None = None  # what a damage-conditioned model read from this file (`engine.damage.Damage`)

    def as_dict(self) -> dict:
        return {"input": str(self.source), "output": str(self.output) if self.output else None,
                "status": self.status, "error": self.reason or None,
                "input_size": list(self.in_size) if self.in_size else None,
                "output_size": list(self.out_size) if self.out_size else None,
                "seconds": round(self.seconds, 3), "warnings": self.warnings, "kernels": self.kernels,
                "tile": self.tile, "damage_read": self.damage}


def _walk(folder: Path, recursive: bool, skip: Path | None) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        if skip is not None:
            dirs[:] = [d for d in dirs if (root_path / d).resolve() != skip]
        if not recursive:
            dirs[:] = []
        dirs.sort()
        files += [root_path / n for n in sorted(names) if is_scanned_image(root_path / n)]
    return files


def collect_inputs(inputs: list[str], recursive: bool, out_dir: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to the output folder's root) for every input file, folder or glob."""
    out_resolved = out_dir.resolve()
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if path.resolve() == out_resolved:
                raise UsageError(f"{item}: the output folder is the input folder; choose another -o")
            for f in _walk(path, recursive, out_resolved):
                rel = f.relative_to(path) if recursive else Path(f.name)
                found.append((f, rel))
        elif path.exists() or not (GLOB_CHARS & set(item)):
            found.append((path, Path(path.name)))  # a missing file fails on its own, later
        else:
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                raise UsageError(f"{item}: no file matches this pattern")
            base = _glob_base(item)
            # like folder walks, a pattern never picks up earlier outputs: re-running must resume, not re-upscale them
            found += [(Path(m), _mirrored(Path(m), base) if recursive else Path(Path(m).name)) for m in matches
                      if Path(m).is_file() and is_image_path(Path(m)) and out_resolved not in Path(m).resolve().parents]
    return _unique(found)


def _glob_base(pattern: str) -> Path:
    """The pattern's leading folders without wildcards: what `-r` mirrors a match's path from."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _mirrored(match: Path, base: Path) -> Path:
    try:
        return match.relative_to(base)
    except ValueError:
        return Path(match.name)


def _unique(found: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """One entry per file: naming a file twice (or a file and its folder) must not read as an output clash."""
    seen: set[Path] = set()
    unique = []
    for src, rel in found:
        key = src.resolve() if src.exists() else src
        if key not in seen:
            seen.add(key)
            unique.append((src, rel))
    return unique


MODEL_SCALES = (2, 3, 4)


def resolve_scales(scale: int | None, outscale: float | None) -> tuple[int, float | None]:
    """(model scale, final factor or None) from --scale/--outscale, as Real-ESRGAN's --outscale works.

    The model runs at `scale`; a final Lanczos resize gives `outscale` times the input. Without -s, the
    smallest model scale that reaches the outscale is used, so nothing is upscaled by plain resampling.
    """
    if outscale is None:
        return scale or MODEL_SCALES[0], None
    if not math.isfinite(outscale) or outscale < 1:
        raise UsageError(f"{outscale:g}: must be at least 1")
    if scale is None:
        scale = next((s for s in MODEL_SCALES if s >= outscale - 1e-9), None)
        if scale is None:
            raise UsageError(f"{outscale:g} is beyond the largest model scale x{MODEL_SCALES[-1]}")
    if outscale > scale + 1e-9:
        raise UsageError(f"{outscale:g} is above --scale {scale}: only the model enlarges, the final resize "
                         "only shrinks; use a larger -s, or leave -s out to pick one")
    return scale, (None if abs(outscale - scale) < 1e-9 else outscale)


def scale_label(scale: int, outscale: float | None) -> str:
    """What {scale} in --name stands for: the final factor (2, 1.5, 3.5)."""
    return f"{scale if outscale is None else outscale:g}"


def output_path(out_dir: Path, rel: Path, template: str, scale: int | str, model: str, ext: str) -> Path:
    """Where one output goes; raises UsageError when the template escapes the output folder."""
    try:
        name = template.format(stem=rel.stem, scale=scale, model=model, ext=ext.lstrip("."))
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"--name {template!r}: bad template ({exc}); use {{stem}}, {{scale}}, {{model}}") from None
    if not name or name in (".", ".."):
        raise UsageError(f"--name {template!r} gives an empty file name")
    target = (out_dir / rel.parent / f"{name}{ext}").resolve()
    root = out_dir.resolve()
    if target == root or root not in target.parents:
        raise UsageError(f"--name {template!r} would write outside the output folder {out_dir}")
    return target


def plan_jobs(
    inputs: list[str], out_dir: Path, *, recursive: bool, template: str, scale: int | str, model: str,
    fmt: str, overwrite: bool,
) -> list[Job]:
    """Pair every input with its output, marking clashes, inputs-as-outputs and existing outputs."""
    pairs = collect_inputs(inputs, recursive, out_dir)
    sources = {src.resolve() for src, _ in pairs if src.exists()}
    claimed: dict[Path, Path] = {}
    jobs = []
    for src, rel in pairs:
        job = Job(src, None)
        jobs.append(job)
        if not src.is_file():
            job.status, job.reason = "failed", "no such file" if not src.exists() else "not a regular file"
            if not src.exists() and str(src).lower() in FLAG_WORDS:
                job.reason += " (on/off flags take no value: write --overwrite, not --overwrite true)"
            continue
        if not is_image_path(src):
            job.status, job.reason = "failed", f"not a supported image type ({SUPPORTED_TYPES})"
            continue
        _, ext = output_format_for(src.suffix.lstrip("."), fmt)  # the writer's aliases name jpg, tif
        target = output_path(out_dir, rel, template, scale, model, ext)
        job.output = target
        if target in sources:
            job.status, job.reason = "failed", "output would overwrite an input file; change -o or --name"
        elif target in claimed:
            job.status, job.reason = "failed", f"output name clash: {claimed[target]} already writes {target.name}"
        elif target.exists() and not overwrite:
            job.status, job.reason = "skipped", "output exists (use --overwrite to redo)"
            claimed[target] = src
        else:
            claimed[target] = src
    return jobs


def fill_transparent(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Replace colour under fully transparent pixels by alpha-weighted neighbour colour.

    Colour hidden by alpha is often black; a network (or any filter) would smear it
    across visible edges as a dark fringe. Pulling in visible colour avoids that.
    """
    hidden = alpha == 0
    if not hidden.any() or hidden.all():
        return rgb
    top = 65535.0 if rgb.dtype == np.uint16 else 255.0
    colour = torch.from_numpy(rgb.astype(np.float32) / top).permute(2, 0, 1)[None]
    weight = torch.from_numpy((~hidden).astype(np.float32))[None, None]
    filled = colour.clone()
    known = weight.clone()
    for _ in range(64):  # each pass spreads known colour by a pixel; stops early when all is filled
        num = torch.nn.functional.avg_pool2d(filled * known, 3, 1, 1, count_include_pad=False)
        den = torch.nn.functional.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        grow = (known == 0) & (den > 0)
        if not grow.any():
            break
        filled = torch.where(grow, num / den.clamp_min(1e-8), filled)
        known = torch.where(grow, torch.ones_like(known), known)
    out = filled[0].permute(1, 2, 0).numpy()
    out[~hidden] = rgb[~hidden].astype(np.float32) / top
    return np.rint(np.clip(out, 0, 1) * top).astype(rgb.dtype)


def upscale_plane(plane: np.ndarray, scale: int, strip: int = 256) -> np.ndarray:
    """Bicubic upscale of one channel (alpha) in strips, straight into the integer output."""
    h, w = plane.shape
    top = 65535.0 if plane.dtype == np.uint16 else 255.0
    out = np.empty((h * scale, w * scale), plane.dtype)
    margin = 4
    for y in range(0, h, strip):
        a, b = max(0, y - margin), min(h, y + strip + margin)
        t = torch.from_numpy(plane[a:b].astype(np.float32) / top)[None, None]
        up = torch.nn.functional.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)[0, 0]
        up = up[(y - a) * scale:(min(h, y + strip) - a) * scale]
        out[y * scale:min(h, y + strip) * scale] = np.rint(up.clamp(0, 1).numpy() * top)
    return out


def process(job: Job, upscaler: "Upscaler", *, fmt: str, quality: int, max_pixels: int,
            outscale: float | None = None, on_tile: Callable[[int, int], None] | None = None) -> Job:
    """Read, upscale (`upscaler`: the model, its options, tile choice and out-of-memory retry), write one
    file; failures land in job.status/reason, never propagate. `outscale`: the final factor of a Lanczos
    resize of the model's output (None: the model's scale).

    The output format is the planned name's extension (`fmt` was folded into it by plan_jobs). Output
    folders are made only once the result exists, and removed again when the file is not written, so a
    failure or Ctrl-C leaves no empty mirrored folder. Ctrl-C marks the job interrupted (with the time it
    ran) and propagates to stop the batch.
    """
    start = time.perf_counter()
    created: list[Path] = []
    try:
        img = read_image(job.source, max_pixels=max_pixels)
        job.warnings += list(img.warnings)
        h, w = img.pixels.shape[:2]
        job.in_size = (w, h)
        rgb = to_rgb(img.pixels)
        if img.alpha is not None:
            rgb = fill_transparent(np.ascontiguousarray(rgb), img.alpha)
        out_dtype = np.uint16 if img.bit_depth == 16 else np.uint8
        retries = len(upscaler.report.fallbacks)
        sr, job.tile = upscaler.run(rgb, out_dtype, on_tile)
        job.warnings += upscaler.report.fallbacks[retries:]  # out of memory at the first tile size
        job.kernels = upscaler.last_kernels()
        job.damage = upscaler.last_damage.describe() if upscaler.last_damage is not None else None
        sr = grey_like(sr, img.pixels)  # grey in, grey out
        scale = upscaler.loaded.scale
        alpha = upscale_plane(img.alpha, scale) if img.alpha is not None else None
        if outscale is not None:
            size = final_size(w, h, outscale)
            sr = resize_to(sr, *size)
            alpha = resize_to(alpha, *size) if alpha is not None else None
        out_fmt = normalise_format(job.output.suffix.lstrip("."))  # the planned name's, even if the input's content lies
        dpi = tuple(d * (outscale or scale) for d in img.dpi) if img.dpi else None
        created = make_folders(job.output.parent)  # -r mirrors sub-folders, and --name may add some
        warnings = write_image(job.output, sr, alpha, fmt=out_fmt, bit_depth=img.bit_depth, quality=quality,
                               exif=img.exif, xmp=img.xmp, icc_profile=img.icc_profile, dpi=dpi)
        job.warnings += list(warnings or [])
        job.out_size = (sr.shape[1], sr.shape[0])
        job.status = "done"
    except (ImageReadError, ImageWriteError) as exc:
        job.status, job.reason = "failed", getattr(exc, "reason", str(exc))
    except MemoryError:
        job.status, job.reason = "failed", "out of memory (try --tile 256)"
    except KeyboardInterrupt:
        job.status, job.reason = "interrupted", "interrupted (Ctrl-C) before it was written"
        raise
    except Exception as exc:  # a bug or device failure must not kill the batch
        job.status, job.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        job.seconds = time.perf_counter() - start
        if job.status != "done":
            remove_empty(created)
    return job


def make_folders(folder: Path) -> list[Path]:
    """mkdir -p that returns the folders it created (outermost first); raises ImageWriteError."""
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(folder, f"cannot create folder {folder} ({exc.strerror or exc})") from None
    return missing[::-1]


def remove_empty(folders: list[Path]) -> None:
    """Remove folders this run created for a file that was not written (innermost first, only if empty)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def unwritable_folders(jobs: list[Job]) -> list[tuple[Path, str]]:
    """(folder, reason) for each output folder of a pending job that cannot be written.

    A probe file is created and removed in the folder, or in its nearest existing ancestor when the
    folder is still to be made, so a read-only or misnamed -o is found before any file is upscaled.
    """
    problems: list[tuple[Path, str]] = []
    checked: set[Path] = set()
    for folder in dict.fromkeys(j.output.parent for j in jobs if j.status == "pending" and j.output):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing in checked:
            continue
        checked.add(existing)
        if not existing.is_dir():
            problems.append((folder, f"cannot create the output folder: {existing} is a file, not a folder"))
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=".ribsr-write-check-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            what = "output folder" if existing == folder else f"output folder (in {existing})"
            problems.append((folder, f"cannot write the {what}: {exc.strerror or exc}"))
    return problems


def no_images_message(inputs: list[str], recursive: bool) -> str:
    """Why nothing was found, with the -r hint when a named folder has images only in sub-folders."""
    if not recursive:
        for item in inputs:
            path = Path(item)
            if path.is_dir() and _walk(path, True, None):
                return f"no image files found in {item} itself, but its sub-folders have some: add -r to include them"
    return "no image files found in the given inputs"
