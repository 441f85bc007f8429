"""`ribsr upscale`: options, progress and the summary; the work itself is in ribsr_cli.upscaling.

Multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame is
upscaled and a warning says so.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

from ribsr_cli.errors import UsageError
from ribsr_cli.fileutil import atomic_write_text
from ribsr_cli.imaging import DEFAULT_MAX_PIXELS

FORMATS = ("keep", "png", "jpg", "webp", "tiff")


def command(
    inputs: Optional[List[str]] = typer.Argument(None, metavar="INPUT", show_default=False,
                                                 help="Image files, folders or glob patterns."),
    input_opts: Optional[List[str]] = typer.Option(None, "--input", "-i", metavar="PATH", show_default=False,
                                                   help="One more input (repeatable), as Real-ESRGAN's and waifu2x's -i."),
    output: Path = typer.Option(Path("upscaled"), "--output", "-o", metavar="DIR", help="Output folder (created if needed)."),
    scale_text: Optional[str] = typer.Option(None, "--scale", "-s", metavar="2|3|4", show_default=False,
                                             help="Model scale: 2, 3 or 4 (default 2, or the smallest that reaches "
                                                  "--outscale). A fraction such as 3.5 is read as --outscale 3.5."),
    outscale: Optional[float] = typer.Option(None, "--outscale", metavar="F", help="Final size as a factor of the input (e.g. 1.5, 3.5): the model runs at --scale, then a Lanczos resize shrinks its output to this."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME|FILE", help="Shipped or stored model name, checkpoint path, or an alias: clean (the default: scans, renders, downsampled images) or real (phone/camera JPEGs: removes noise and JPEG blocks), the shipped model of that kind for the scale."),
    denoise: Optional[float] = typer.Option(None, "--denoise", min=0.0, max=1.0, metavar="S", help="How much noise and JPEG blocking to remove, 0..1: mixes the scale's shipped clean (0) and real (1) models' weights; with no -m, -m clean/real or a shipped name of that pair."),
    arch: Optional[str] = typer.Option(None, "--arch", metavar="PRESET|FILE", help="Architecture for a checkpoint that does not name its own (preset or JSON/YAML)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Walk sub-folders and mirror the tree under the output folder."),
    name: str = typer.Option("{stem}_x{scale}", "--name", metavar="TEMPLATE", help="Output name template: {stem}, {scale} (the final factor), {model}."),
    fmt: str = typer.Option("keep", "--format", "-f", metavar="FORMAT", help="Output format: keep, png, jpg (or jpeg), webp, tiff (or tif)."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, metavar="Q", help="Quality for JPEG (4:4:4) and WebP."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist (default: skip them, so re-running resumes)."),
    tile: str = typer.Option("auto", "--tile", "-t", metavar="auto|N", help="Tile side in LR pixels (at least 32), 0 for whole images, or auto (from free memory)."),
    tile_overlap: int = typer.Option(32, "--tile-overlap", min=0, metavar="N", help="Overlap between tiles in LR pixels."),
    batch_tiles: int = typer.Option(1, "--batch-tiles", min=1, metavar="N", help="Tiles per forward pass."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", "--precision", metavar="auto|fp32|bf16|fp16", help="auto: bf16 on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16; see ribsr info), fp32 elsewhere."),
    attention: str = typer.Option("auto", "--attention", metavar="auto|flash|sdpa|math", help="Attention kernel (ribsr info shows which runs)."),
    tta: bool = typer.Option(False, "--tta", help="8-fold flip/rotate self-ensemble (8x slower, slightly better)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", metavar="N", help="Refuse images with more pixels than this (decompression bombs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be done, check the output folders can be written, and exit."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write the run and per-file results to this JSON file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per-file details (tile, kernel, skip reasons) and warnings."),
    ray_address: Optional[str] = typer.Option(None, "--ray", metavar="local|auto|ray://HOST:PORT", show_default=False,
                                              help="Run the files on Ray workers: local starts Ray on this machine, auto or ray://HOST:10001 attach to a cluster (needs pip install \"ribsr[ray]\"; paths must be on shared storage)."),
    workers: int = typer.Option(1, "--workers", min=1, metavar="N", help="With --ray: worker processes, each with its own model (the cluster's CPUs are shared out among them)."),
) -> None:
    """Upscale image files and folders. Exit code: 0 all done or skipped, 1 some file failed, 2 usage error,
    130 interrupted.

    Which model: the default suits clean inputs (scans, renders, images downsampled on a computer); phone and
    camera JPEGs carry noise and compression, which it sharpens: use -m real there, or --denoise 0.5 for a
    middle ground that keeps more fine texture."""
    from rich.console import Console

    from ribsr_cli.commands import options
    from ribsr_cli.upscaling import no_images_message, plan_jobs, resolve_scales, scale_label, unwritable_folders

    started = time.perf_counter()
    # soft_wrap: a "failed FILE: reason" line stays one line in logs and pipes, whatever the width
    console = Console(stderr=False, quiet=False, soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    all_inputs = list(inputs or []) + list(input_opts or [])
    if not all_inputs:
        raise UsageError("INPUT", "give at least one image file, folder or pattern (as an argument or with -i)")
    fmt = options.normalise_format(fmt, FORMATS)
    tile_value = options.parse_tile(tile)
    scale, scale_outscale = options.parse_scale(scale_text)
    if scale_outscale is not None:
        if outscale is not None:
            raise UsageError(f"--scale {scale_text}", "a final factor (read as --outscale); give it once, "
                             "with -s or with --outscale")
        outscale = scale_outscale
        if not quiet:
            err.print(f"note: -s {scale_text} is read as --outscale {scale_text} (the final size; the model "
                      "scale is picked to reach it)", highlight=False)
    scale, outscale = resolve_scales(scale, outscale)
    from ribsr_cli.engine.runner import RunOptions

    run_options = RunOptions(device=device, precision=precision, attention=attention, tile=tile_value,
                             overlap=tile_overlap, batch_tiles=batch_tiles, tta=tta)
    dev, dtype = run_options.resolve()  # a bad --device/--precision/--attention: a usage error before planning
    if ray_address:
        from ribsr_cli.distributed.ray_upscale import import_ray

        import_ray()
    elif workers != 1:
        raise UsageError("--workers", "worker processes are Ray's: add --ray local (or a cluster address)")
    # which weights -m names (no weights read): needed now when the output names say {model} (or --denoise
    # names a pair), else only once a file needs the model, so a finished batch re-runs without it
    needed_now = denoise is not None or _names_model(name)
    model_ref = _locate_model(model, scale, arch, denoise, required=needed_now)
    jobs = plan_jobs(all_inputs, output, recursive=recursive, template=name, scale=scale_label(scale, outscale),
                     model=model_ref.name if model_ref else "", fmt=fmt, overwrite=overwrite)
    if not jobs:
        raise UsageError(no_images_message(all_inputs, recursive))
    for folder, reason in unwritable_folders(jobs):  # before any work, in dry runs too
        raise UsageError(folder, f"{reason}; choose another -o")
    if dry_run:
        for job in jobs:
            state = "would write" if job.status == "pending" else job.status
            console.print(f"{state:12s} {job.source} -> {job.output or '-'}" + (f"  ({job.reason})" if job.reason else ""),
                          highlight=False)
        raise typer.Exit(1 if any(j.status == "failed" for j in jobs) else 0)

    upscaler = None
    if any(j.status == "pending" for j in jobs):  # a finished batch re-run needs no model
        model_ref = model_ref or _locate_model(model, scale, arch, denoise, required=True)
        upscaler = _load_upscaler(err, model_ref, run_options)  # with --ray too: a bad model is one usage error, not N
        if verbose:
            final = f", then Lanczos to x{outscale:g}" if outscale else ""
            tiles = "auto (from free memory, per file)" if tile_value == "auto" else (
                "whole images" if tile_value == 0 else f"{tile_value} LR px")
            err.print(f"model {upscaler.name} x{scale} on {upscaler.device}, {upscaler.report.precision}, "
                      f"tile {tiles}, overlap {tile_overlap}{final}", highlight=False)
    from ribsr_cli.engine.runtime import precision_name

    run = RunInfo(model_ref.name if model_ref else (model or "default"), scale, outscale, str(dev),
                  precision_name(dtype), attention, tile_value, tile_overlap, tta)
    if upscaler is not None:
        run.sha256, run.source = upscaler.loaded.sha256, upscaler.loaded.source
        run.precision = upscaler.report.precision  # after a foreign model's fallback to fp32
    remote = None
    if ray_address:  # the same jobs and per-file work; only the scheduling moves to Ray
        from ribsr_cli.distributed.ray_upscale import WorkerSettings, upscale_on_ray

        settings = WorkerSettings(model, scale, arch, denoise, run_options, outscale, fmt, quality, max_pixels)
        run.device = f"ray {ray_address}, {workers} worker(s), {device}"
        remote = functools.partial(upscale_on_ray, settings=settings, address=ray_address, workers=workers)
    # a UsageError from here is --ray ADDRESS with no cluster there
    interrupted = _run_jobs(jobs, upscaler, outscale, fmt, quality, max_pixels, console, err, quiet, verbose, remote)
    run.seconds = time.perf_counter() - started
    _summary(jobs, console, err, quiet, interrupted, run.seconds, run.precision)
    json_failed = bool(json_out) and not _write_json(json_out, run, jobs, err)
    if interrupted:
        raise typer.Exit(130)
    raise typer.Exit(1 if json_failed or any(j.status == "failed" for j in jobs) else 0)


@dataclass
class RunInfo:
    """What ran, for the --json report: the model and its weights' hash, device, precision, tiling."""

    model: str
    scale: int
    outscale: float | None
    device: str
    precision: str
    attention: str
    tile: int | str
    tile_overlap: int
    tta: bool
    sha256: str | None = None
    source: str | None = None
    seconds: float = 0.0


def _names_model(template: str) -> bool:
    """True when the --name template uses {model} (a malformed template is plan_jobs's to report)."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError:
        return False
    return any(f.split(".")[0].split("[")[0] == "model" for f in fields)


def _locate_model(model: str | None, scale: int, arch: str | None, denoise: float | None, *, required: bool):
    """The weights `-m` (and --denoise) name, and so what {model} in --name stands for: the registry's name
    for them, the very name the loaded model carries. A -m that names nothing (or a --denoise outside a
    shipped clean/real pair) is a usage error when `required`, else None (found out again when needed)."""
    from ribsr_cli.engine.checkpoint import CheckpointError
    from ribsr_cli.engine.registry import locate

    try:
        return locate(model, scale, arch, denoise)
    except (CheckpointError, ValueError) as exc:
        if not required:
            return None
        raise UsageError(str(exc)) from None


def _write_json(path: Path, run: RunInfo, jobs, err) -> bool:
    """The --json report: what ran (version, model and weights' hash, device, precision, tiling), totals and
    every file; a failure to write it is one error line (exit 1), not a traceback after the work is done."""
    from ribsr_cli import __version__

    counts = Counter(j.status for j in jobs)
    done = [j for j in jobs if j.status == "done"]
    totals = {"files": len(jobs), **{k: counts.get(k, 0) for k in ("done", "skipped", "failed", "interrupted")},
              "input_megapixels": round(sum(j.in_size[0] * j.in_size[1] for j in done) / 1e6, 6),
              "output_megapixels": round(sum(j.out_size[0] * j.out_size[1] for j in done) / 1e6, 6),
              "elapsed_seconds": round(run.seconds, 3)}
    doc = {"ribsr_version": __version__, "model": run.model, "model_sha256": run.sha256, "model_source": run.source,
           "scale": run.scale, "outscale": run.outscale or run.scale, "device": run.device,
           "precision": run.precision, "attention": run.attention, "tile": run.tile,
           "tile_overlap": run.tile_overlap, "tta": run.tta, "totals": totals, "files": [j.as_dict() for j in jobs]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        err.print(f"[red]error:[/] {path}: cannot write the JSON report ({exc.strerror or exc})", highlight=False)
        return False
    return True


def _load_upscaler(err, model_ref, options):
    """The model loaded and prepared for `options`; a model that cannot load is a usage error. A foreign
    model's precision fallback is a warning."""
    from ribsr_cli.engine.checkpoint import CheckpointError
    from ribsr_cli.engine.registry import load_model
    from ribsr_cli.engine.runner import Upscaler

    try:
        upscaler = Upscaler(load_model(model_ref), options)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    for note in upscaler.report.notes:
        err.print(f"[yellow]warning[/] {note}", highlight=False)
    return upscaler


def _run_jobs(jobs, upscaler, outscale, fmt, quality, max_pixels, console, err, quiet, verbose,
              remote=None) -> bool:
    """Upscale the pending jobs under one progress bar; True when Ctrl-C stopped the batch.

    `remote(jobs)`, when given, does the work elsewhere (Ray) and yields each job once its status row is in:
    the bar, the per-file lines and the report then follow the rows as they arrive."""
    from ribsr_cli.commands.upscale_progress import BatchProgress
    from ribsr_cli.upscaling import process

    pending = [j for j in jobs if j.status == "pending"]
    for job in jobs:
        if job.status == "failed":
            err.print(f"[red]failed[/] {job.source}: {job.reason}", highlight=False)
        elif job.status == "skipped" and verbose:
            err.print(f"skipped {job.source}: {job.reason}", highlight=False)
    bar = BatchProgress(pending, err, disable=quiet or not pending)
    interrupted = False
    with bar:
        job = None
        try:  # Ctrl-C may land between files too; outputs are atomic, so only the report needs care
            for job in (pending if remote is None else remote(jobs)):
                bar.start_file(job)
                if remote is None:
                    process(job, upscaler, outscale=outscale, fmt=fmt, quality=quality, max_pixels=max_pixels,
                            on_tile=bar.on_tile)
                bar.finish_file(job)
                if job.status == "failed":
                    bar.print(f"[red]failed[/] {job.source}: {job.reason}")
                elif verbose:
                    extra = f"  ({'; '.join(job.warnings)})" if job.warnings else ""
                    kernel = f", kernel {', '.join(job.kernels)} ({upscaler.report.precision})" if job.kernels else ""
                    tile = "whole" if not job.tile else f"{job.tile} px"
                    damage = f", read damage: {job.damage}" if job.damage else ""
                    bar.print(f"done   {job.source} -> {job.output} in {job.seconds:.1f}s, tile {tile}{kernel}"
                              f"{damage}{extra}")
                elif job.warnings and not quiet:
                    bar.print(f"[yellow]warning[/] {job.source}: {'; '.join(job.warnings)}")
        except KeyboardInterrupt:
            if job is not None and job.status == "pending":  # stopped before process() could mark it
                job.status, job.reason = "interrupted", "interrupted (Ctrl-C) before it was written"
            interrupted = True
    return interrupted


def _summary(jobs, console, err, quiet: bool, interrupted: bool, seconds: float, precision: str = "") -> None:
    """The table (or one line with -q), skip reasons counted, failures named; `seconds` is the wall time."""
    from rich.table import Table

    done = [j for j in jobs if j.status == "done"]
    skipped = [j for j in jobs if j.status == "skipped"]
    failed = [j for j in jobs if j.status == "failed"]
    stopped = [j for j in jobs if j.status == "interrupted"]
    mp = sum(j.out_size[0] * j.out_size[1] for j in done) / 1e6
    if not quiet:
        table = Table(title="ribsr upscale summary")
        cols = ["done", "skipped", "failed"] + (["interrupted"] if stopped else []) + ["time", "output MP/s"]
        for col in cols:
            table.add_column(col, justify="right")
        cells = [str(len(done)), str(len(skipped)), str(len(failed))] + ([str(len(stopped))] if stopped else [])
        table.add_row(*cells, f"{seconds:.1f} s", f"{mp / seconds:.2f}" if seconds and mp else "-")
        console.print(table)
        for reason, count in Counter(j.reason for j in skipped).most_common():
            console.print(f"  skipped {count}: {reason}", highlight=False)
        for job in failed:
            console.print(f"  [red]failed[/] {job.source}: {job.reason}", highlight=False)
        kernels = list(dict.fromkeys(k for j in done for k in j.kernels))
        if kernels:
            ran_in = f" ({precision})" if precision else ""
            console.print(f"attention kernel that ran: {', '.join(kernels)}{ran_in}", highlight=False)
    else:
        line = f"{len(done)} done, {len(skipped)} skipped, {len(failed)} failed"
        console.print(line + (f", {len(stopped)} interrupted" if stopped else ""), highlight=False)
    if interrupted:
        waiting = sum(j.status == "pending" for j in jobs)
        what = f"; {stopped[0].source} stopped after {stopped[0].seconds:.1f} s, not written" if stopped else ""
        err.print(f"[yellow]interrupted:[/] {len(done)} file(s) finished and kept, {waiting} not started{what}; "
                  "no partial output was left", highlight=False)
