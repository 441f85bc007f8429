"""`ribsr upscale`: options, progress and the summary; the work itself is in ribsr_cli.upscaling.

Multi-frame files (animated GIF/WebP, multi-page TIFF): the first frame is
upscaled and a warning says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, NoReturn, Optional

import typer

FORMATS = ("keep", "png", "jpg", "webp", "tiff")


def _tile_option(value: str) -> int | str:
    if value == "auto":
        return "auto"
    try:
        tile = int(value)
    except ValueError:
        raise typer.BadParameter("use a number of LR pixels, 0 (whole image) or auto") from None
    if tile < 0 or 0 < tile < 32:
        raise typer.BadParameter("tile must be 0 (whole image), auto, or at least 32")
    return tile


def command(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Image files, folders or glob patterns."),
    output: Path = typer.Option(Path("upscaled"), "--output", "-o", help="Output folder (created if needed)."),
    scale: Optional[int] = typer.Option(None, "--scale", "-s", min=2, max=4, show_default="2",
                                        help="Model scale: 2, 3 or 4 (default 2, or the smallest that reaches --outscale)."),
    outscale: Optional[float] = typer.Option(None, "--outscale", help="Final size as a factor of the input (e.g. 1.5, 3.5): the model runs at --scale, then a Lanczos resize shrinks its output to this."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Shipped model name or checkpoint path (default: shipped model for the scale)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for a checkpoint that does not name its own (preset or JSON/YAML)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Walk sub-folders and mirror the tree under the output folder."),
    name: str = typer.Option("{stem}_x{scale}", "--name", help="Output name template: {stem}, {scale} (the final factor), {model}."),
    fmt: str = typer.Option("keep", "--format", "-f", help="Output format: keep, png, jpg, webp, tiff."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="Quality for JPEG (4:4:4) and WebP."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist (default: skip them, so re-running resumes)."),
    tile: str = typer.Option("auto", "--tile", help="Tile size in LR pixels, 0 for whole images, or auto (from free memory)."),
    tile_overlap: int = typer.Option(32, "--tile-overlap", min=0, help="Overlap between tiles in LR pixels."),
    batch_tiles: int = typer.Option(1, "--batch-tiles", min=1, help="Tiles per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (auto: bf16 on CUDA, fp32 on CPU)."),
    attention: str = typer.Option("auto", "--attention", help="Attention kernel: auto, flash, sdpa or math."),
    tta: bool = typer.Option(False, "--tta", help="8-fold flip/rotate self-ensemble (8x slower, slightly better)."),
    max_pixels: int = typer.Option(250_000_000, "--max-pixels", help="Refuse images with more pixels than this (decompression bombs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be done and exit."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write per-file results to this JSON file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per-file details, kernels and warnings."),
) -> None:
    """Upscale image files and folders. Exit code: 0 all done or skipped, 1 some file failed, 2 usage error."""
    from rich.console import Console

    from ribsr_cli.upscaling import UsageError, plan_jobs, resolve_scales, scale_label

    # soft_wrap: a "failed FILE: reason" line stays one line in logs and pipes, whatever the width
    console = Console(stderr=False, quiet=False, soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    tile_value = _tile_option(tile)
    try:
        scale, outscale = resolve_scales(scale, outscale)
    except UsageError as exc:
        raise typer.BadParameter(str(exc), param_hint="--outscale")
    dev = _check_run_options(err, device, precision, attention)
    model_label = _model_label(model, scale)
    try:
        jobs = plan_jobs(inputs, output, recursive=recursive, template=name, scale=scale_label(scale, outscale), model=model_label,
                         fmt=fmt, overwrite=overwrite)
    except UsageError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2)
    if not jobs:
        err.print("[red]error:[/] no image files found in the given inputs", highlight=False)
        raise typer.Exit(2)
    if dry_run:
        for job in jobs:
            state = "would write" if job.status == "pending" else job.status
            console.print(f"{state:12s} {job.source} -> {job.output or '-'}" + (f"  ({job.reason})" if job.reason else ""),
                          highlight=False)
        raise typer.Exit(1 if any(j.status == "failed" for j in jobs) else 0)

    engine = None
    if any(j.status == "pending" for j in jobs):  # a finished batch re-run needs no model
        engine = _load_engine(err, model, arch, scale, dev, precision, attention, tile_value, tile_overlap,
                              batch_tiles, tta, outscale)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err.print(f"[red]error:[/] {output}: cannot create output folder ({exc.strerror})", highlight=False)
            raise typer.Exit(2)
        if verbose:
            final = f", then Lanczos to x{outscale:g}" if outscale else ""
            err.print(f"model {engine.name} x{scale} on {engine.device}{final}", highlight=False)
    interrupted = _run_jobs(jobs, engine, fmt, quality, max_pixels, console, err, quiet, verbose)
    _summary(jobs, console, err, quiet, interrupted)
    json_failed = bool(json_out) and not _write_json(json_out, engine.name if engine else model_label, scale, outscale,
                                                     jobs, err)
    if interrupted:
        raise typer.Exit(130)
    raise typer.Exit(1 if json_failed or any(j.status == "failed" for j in jobs) else 0)


def _model_label(model: str | None, scale: int) -> str:
    """What {model} in --name stands for: the checkpoint's stem, the shipped name, or the scale's shipped default."""
    if model and Path(model).exists():
        return Path(model).stem
    if model:
        return model
    from ribsr_cli.engine.registry import default_entry

    entry = default_entry(scale)
    return entry["name"] if entry else "default"


def _write_json(path: Path, model_name: str, scale: int, outscale: float | None, jobs, err) -> bool:
    """The --json report; a failure to write it is one error line (exit 1), not a traceback after the work is done."""
    data = json.dumps({"model": model_name, "scale": scale, "outscale": outscale or scale,
                       "files": [j.as_dict() for j in jobs]}, indent=2)
    try:
        path.write_text(data + "\n")
    except OSError as exc:
        err.print(f"[red]error:[/] {path}: cannot write the JSON report ({exc.strerror or exc})", highlight=False)
        return False
    return True


def _usage_exit(err, exc: Exception) -> NoReturn:
    err.print(f"[red]error:[/] {str(exc).splitlines()[0]}", highlight=False)
    raise typer.Exit(2)


def _check_run_options(err, device: str, precision: str, attention: str):
    """The device to run on; a bad --device/--precision/--attention is a usage error before any planning."""
    from ribsr_cli.engine.inference import check_run_options

    try:
        return check_run_options(device, precision, attention)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: torch rejects a --device string
        _usage_exit(err, exc)


def _load_engine(err, model, arch, scale, dev, precision, attention, tile, overlap, batch_tiles, tta, outscale):
    from ribsr_cli.engine.checkpoint import CheckpointError
    from ribsr_cli.engine.inference import prepare
    from ribsr_cli.engine.registry import resolve
    from ribsr_cli.upscaling import Engine

    try:
        label, net = resolve(model, scale, arch)
        autocast = prepare(net, dev, precision, attention)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        _usage_exit(err, exc)
    return Engine(net, label, scale, dev, tile, overlap, batch_tiles, tta, autocast, outscale)


def _run_jobs(jobs, engine, fmt, quality, max_pixels, console, err, quiet, verbose) -> bool:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ribsr_cli.upscaling import process

    pending = [j for j in jobs if j.status == "pending"]
    for job in jobs:
        if job.status == "failed":
            err.print(f"[red]failed[/] {job.source}: {job.reason}", highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err, disable=quiet or not pending, transient=False)
    interrupted = False
    with progress:
        files = progress.add_task("files", total=len(pending))
        tiles = progress.add_task("tiles", total=1, visible=False)

        def on_tile(done: int, total: int) -> None:
            progress.update(tiles, completed=done, total=total, visible=total > 1)

        job = None
        try:  # Ctrl-C may land between files too; outputs are atomic, so only the report needs care
            for job in pending:
                progress.update(files, description=f"files  {job.source.name[:40]}")
                process(job, engine, fmt=fmt, quality=quality, max_pixels=max_pixels, on_tile=on_tile)
                progress.update(tiles, visible=False, completed=0)
                progress.advance(files)
                if job.status == "failed":
                    progress.console.print(f"[red]failed[/] {job.source}: {job.reason}", highlight=False)
                elif verbose:
                    extra = f"  ({'; '.join(job.warnings)})" if job.warnings else ""
                    kernel = f", kernel {', '.join(job.kernels)}" if job.kernels else ""
                    progress.console.print(f"done   {job.source} -> {job.output} in {job.seconds:.1f}s{kernel}{extra}",
                                           highlight=False)
                elif job.warnings and not quiet:
                    progress.console.print(f"[yellow]warning[/] {job.source}: {'; '.join(job.warnings)}", highlight=False)
        except KeyboardInterrupt:
            if job is not None and job.status == "pending":
                job.status, job.reason = "failed", "interrupted"
            interrupted = True
    return interrupted


def _summary(jobs, console, err, quiet: bool, interrupted: bool) -> None:
    from rich.table import Table

    done = [j for j in jobs if j.status == "done"]
    skipped = [j for j in jobs if j.status == "skipped"]
    failed = [j for j in jobs if j.status == "failed"]
    seconds = sum(j.seconds for j in jobs)
    mp = sum(j.out_size[0] * j.out_size[1] for j in done) / 1e6
    if not quiet:
        table = Table(title="ribsr upscale summary")
        for col in ("done", "skipped", "failed", "time", "output MP/s"):
            table.add_column(col, justify="right")
        table.add_row(str(len(done)), str(len(skipped)), str(len(failed)), f"{seconds:.1f} s",
                      f"{mp / seconds:.2f}" if seconds and mp else "-")
        console.print(table)
        for job in failed:
            console.print(f"  [red]failed[/] {job.source}: {job.reason}", highlight=False)
        kernels = list(dict.fromkeys(k for j in done for k in j.kernels))
        if kernels:
            console.print(f"attention kernel that ran: {', '.join(kernels)}", highlight=False)
    else:
        console.print(f"{len(done)} done, {len(skipped)} skipped, {len(failed)} failed", highlight=False)
    if interrupted:
        waiting = sum(j.status == "pending" for j in jobs)
        err.print(f"[yellow]interrupted:[/] {len(done)} file(s) finished and kept, {waiting} not started; "
                  "no partial output was left", highlight=False)
