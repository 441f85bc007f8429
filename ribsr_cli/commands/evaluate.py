"""`ribsr eval`: PSNR-Y / SSIM-Y on benchmark sets, bicubic alongside, published numbers beside it.

The scoring lives in `ribsr_cli.evaluation`; this module parses flags, loads a
model through `ribsr_cli.engine.runner` (imported only when a model is asked
for, so bicubic evaluation never needs the engine), and writes the table, JSON
and CSV. User mistakes raise `UsageError` (one line, exit code 2, printed by `cli.guarded`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

import typer

from ribsr_cli.errors import RibsrError, UsageError
from ribsr_cli.fileutil import atomic_write_text

BASELINES = ("bicubic",)
MAX_SCALE = 8


def parse_scales(values: list[str]) -> list[int]:
    """'2,3' and repeated -s flags into unique integer scales, in the order given."""
    scales: list[int] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            try:
                scale = int(item)
            except ValueError:
                raise UsageError(f"invalid scale {item!r}: use whole numbers 2-{MAX_SCALE}, e.g. -s 2,3,4")
            if not 2 <= scale <= MAX_SCALE:
                raise UsageError(f"invalid scale {scale}: use whole numbers 2-{MAX_SCALE}, e.g. -s 2,3,4")
            if scale not in scales:
                scales.append(scale)
    if not scales:
        raise UsageError("no scale given: use e.g. -s 2,3,4")
    return scales


def _run_options(device: str, precision: str, attention: str, tile: int | str, tta: bool):
    """The model's run options as scores need them (`RunOptions.for_scoring`: fp32 and whole images unless
    asked); None when the engine cannot be imported, which is reported, with its hint, when the model is
    loaded."""
    try:
        from ribsr_cli.engine.runner import RunOptions
    except ImportError:
        return None
    return RunOptions(device=device, precision=precision, attention=attention, tile=tile, tta=tta).for_scoring()


def _model_upscaler(model: Optional[str], scale: int, options, denoise: Optional[float] = None):
    """The engine's Upscaler for `-m` at `scale`, a method like bicubic's; the import is lazy so bicubic
    works without it."""
    try:
        from ribsr_cli.engine.runner import load_upscaler
    except ImportError as exc:
        hint = "" if model else " (no -m given, so the shipped model was wanted)"
        raise UsageError(f"model upscaling is unavailable{hint}: cannot import ribsr_cli.engine.runner "
              f"({exc}); use --no-model to score bicubic only")
    try:
        return load_upscaler(model, scale, options, denoise=denoise)
    except Exception as exc:  # missing/damaged weights, wrong scale, unknown device: one line
        what = f"model {model!r}" if model else "the shipped model"
        hint = "" if model else "; pass -m MODEL, or --no-model for bicubic only"
        raise UsageError(f"cannot load {what} for x{scale}: {exc}{hint}")


LR_SOURCES = {
    "none": "official LR_bicubic/X{s}/{name}x{s}.png where present, else ribsr bicubic_degrade",
    "bicubic": "ribsr bicubic_degrade of the HR (--degrade bicubic / --ignore-lr)",
    "real": "ribsr degrade_for_eval of the HR (--degrade real): the fixed real-photo recipe",
}
_BICUBIC_TEXT = ("MATLAB-compatible imresize(HR, 1/scale): bicubic a=-0.5, antialiased, symmetric edges, "
                 "uint8 rounding after each pass (height first)")


def degradation_text(mode: str) -> str:
    """How the LR was made, for the protocol record; the real recipe's numbers come from its one definition."""
    from ribsr_cli.evaluation import degrade_kind

    if degrade_kind(mode) != "real":
        return _BICUBIC_TEXT
    from ribsr_cli.training.degrade import EvalRecipe

    recipe = EvalRecipe.parse(mode)
    return f"ribsr_cli.training.degrade.degrade_for_eval ({recipe.name}): {recipe.describe(_BICUBIC_TEXT)}"


DEGRADE_TITLES = {"none": "", "bicubic": " (LR: ribsr bicubic)", "real": " (degraded input: --degrade {mode})"}


def degrade_title(mode: str) -> str:
    """The table title's note on how the LR was made."""
    from ribsr_cli.evaluation import degrade_kind

    return DEGRADE_TITLES[degrade_kind(mode)].format(mode=mode)


def protocol(args: dict, report_lr: dict[str, int], methods: list[str]) -> dict:
    """Every choice that changes the numbers, for the JSON file."""
    from ribsr_cli.evaluation import PUBLISHED_TOLERANCE_DB, degrade_kind
    from ribsr_cli.imaging.metrics import DATA_RANGE, SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW

    return {
        "datasets": args["datasets"],
        "scales": args["scales"],
        "methods": methods,
        "hr": "mod-cropped to a multiple of the scale (bottom/right)",
        "lr_source": LR_SOURCES[degrade_kind(args["degrade"])],
        "lr_official_files": report_lr,
        "degrade": args["degrade"],
        "degradation": degradation_text(args["degrade"]),
        "bicubic_upscaler": "the same imresize(LR, scale) on uint8",
        "sr_quantization": "uint8, round half away from zero, clipped to 0..255",
        "channel": "RGB (mean over channels)" if args["rgb"] else "Y",
        "y_conversion": "BT.601: 16 + (65.481 R + 128.553 G + 24.966 B) / 255, float64, unrounded",
        "grayscale": "scored on the grey values",
        "crop_border": "scale" if args["crop_border"] is None else args["crop_border"],
        "psnr": {"data_range": DATA_RANGE, "mean": "arithmetic mean of per-image PSNR"},
        "ssim": {"window": f"gaussian {SSIM_WINDOW}x{SSIM_WINDOW}", "sigma": SSIM_SIGMA, "k1": SSIM_K1, "k2": SSIM_K2,
                 "data_range": DATA_RANGE, "padding": "none (valid region)", "float": "float64"},
        "tta": args["tta"],
        "tile": args["tile"],
        "tiled_fallbacks": args["tiled_fallbacks"] or "none: every image was upscaled whole",
        "device": args["device"],
        "precision": args["precision"],
        "models": args["models"],
        "attention_kernels": args["attention_kernels"],
        "seconds": "time inside each method's upscaling calls, summed over images (I/O and scoring excluded)",
        "published_bicubic_tolerance_db": PUBLISHED_TOLERANCE_DB,
        "non_finite": "PSNR of identical images is infinite and written as null",
    }


def _csv_text(results) -> str:
    """Per-image rows and each method's mean, as the --csv file holds them."""
    fh = io.StringIO(newline="")
    out = csv.writer(fh)
    out.writerow(["dataset", "scale", "method", "image", "psnr_y", "ssim_y", "seconds"])
    for r in results:
        for s in r.per_image:
            out.writerow([r.dataset, r.scale, r.method, s.name, f"{s.psnr:.6f}", f"{s.ssim:.6f}", ""])
        out.writerow([r.dataset, r.scale, r.method, "(mean)", f"{r.psnr:.6f}", f"{r.ssim:.6f}", f"{r.seconds:.4f}"])
    return fh.getvalue()


def _write(path: Path, text: str) -> None:
    """Write a report all or nothing; a failure is one error line (exit 1)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as exc:
        raise RibsrError(path, f"cannot write ({exc.strerror or exc})") from None


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "inf"


def _print_tables(results, rgb: bool, per_image: bool, tiled: list[str] | None = None, degrade: str = "none") -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ribsr_cli.evaluation import BICUBIC, degrade_kind, published_bicubic

    # No vertical rules or outer padding: nine columns fit an 80-column terminal.
    compact = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True, "show_edge": False}
    chan = "RGB" if rgb else "Y"
    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze numbers into 80 columns
        console = Console(width=160)
    caption = f"tiled (out of memory whole): {'; '.join(tiled)}" if tiled else "whole images, no tiling"
    table = Table(title=f"ribsr eval{degrade_title(degrade)}", caption=caption, **compact)
    for name, justify in [("Dataset", "left"), ("Scale", "right"), ("Method", "left"), (f"PSNR-{chan}", "right"),
                          (f"SSIM-{chan}", "right"), ("Δ PSNR", "right"), ("Published", "right"),
                          ("Images", "right"), ("Seconds", "right")]:
        table.add_column(name, justify=justify, overflow="fold")
    bicubic = {(r.dataset, r.scale): r for r in results if r.method == BICUBIC}
    for r in results:
        base = bicubic.get((r.dataset, r.scale))
        is_base = r.method == BICUBIC
        delta = "" if is_base or base is None else f"{r.psnr - base.psnr:+.3f}"
        ref = published_bicubic(r.dataset, r.scale) if is_base and not rgb and degrade_kind(degrade) != "real" else None
        table.add_row(r.dataset, f"x{r.scale}", r.method, _fmt(r.psnr, 3), _fmt(r.ssim, 4), delta,
                      "" if ref is None else f"{ref:.2f}", str(r.images), f"{r.seconds:.2f}")
    console.print(table)
    if not per_image:
        return
    groups: dict[tuple[str, int], list] = {}
    for r in results:
        groups.setdefault((r.dataset, r.scale), []).append(r)
    for (dataset, scale), rows in groups.items():
        detail = Table(title=f"{dataset} x{scale} per image", **compact)
        detail.add_column("Image")
        for r in rows:
            detail.add_column(f"{r.method} PSNR", justify="right")
            detail.add_column("SSIM", justify="right")
        for i, first in enumerate(rows[0].per_image):
            cells = [first.name]
            for r in rows:
                cells += [_fmt(r.per_image[i].psnr, 3), _fmt(r.per_image[i].ssim, 4)]
            detail.add_row(*cells)
        console.print(detail)


def command(
    datasets: list[str] = typer.Argument(..., metavar="DATASET",
                                         help="Benchmark folders: with HR/ (and LR_bicubic/X{s}/), or plain image "
                                              "folders."),
    scale: list[str] = typer.Option(["2"], "--scale", "-s", metavar="S[,S...]",
                                    help="Scale(s): comma-separated or repeated, e.g. -s 2,3,4."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME|FILE",
                                        help="Model: shipped or stored name, checkpoint file, or clean/real (the "
                                        "shipped model of that kind for each scale). "
                                        "Default: the shipped model for each scale (unless --no-model)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="bicubic",
                                           help="A baseline row beside the model's (bicubic is always scored)."),
    no_model: bool = typer.Option(False, "--no-model", help="Score bicubic only; no model is loaded."),
    tta: bool = typer.Option(False, "--tta", help="x8 self-ensemble for the model (slower, a bit better)."),
    tile: str = typer.Option("auto", "--tile", "-t", metavar="auto|N",
                             help="Model tile side in LR pixels (at least 32); auto or 0: whole images, tiled only "
                                  "when memory says no."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="Model device: auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", "--precision", metavar="auto|fp32|bf16|fp16",
                                  help="Model precision; auto is fp32 on every device, so scores do not depend "
                                       "on the machine."),
    attention: str = typer.Option("auto", "--attention", metavar="auto|flash|sdpa|math",
                                  help="Attention kernel (ribsr info shows which runs)."),
    per_image: bool = typer.Option(False, "--per-image", help="Also print a table of per-image scores."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write results and protocol as JSON here."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="Write per-image and mean scores as CSV here."),
    save_images: Optional[Path] = typer.Option(None, "--save-images", metavar="DIR",
                                                 help="Save SR images under DIR/dataset/xS/method/."),
    rgb: bool = typer.Option(False, "--rgb", help="Score RGB channels instead of Y (not the published protocol)."),
    crop_border: Optional[int] = typer.Option(None, "--crop-border", min=0, metavar="PX",
                                                 help="Border pixels ignored; default: the scale."),
    degrade: str = typer.Option("none", "--degrade", metavar="none|bicubic|real[:blur=S,noise=N,jpeg=Q]",
                                help="How LR is made from each HR image: none (official LR files where present), "
                                     "bicubic (ribsr's bicubic even where official files exist), real (blur σ 0.8, "
                                     "bicubic, noise σ 4/255, JPEG 80: camera-like input, for model and bicubic); "
                                     "real:blur=1.2,noise=2,jpeg=90 sets other values (0 skips a step)."),
    ignore_lr: bool = typer.Option(False, "--ignore-lr", help="Same as --degrade bicubic."),
    denoise: Optional[float] = typer.Option(None, "--denoise", metavar="S",
                                            help="Mix the scale's shipped clean and real models: 0 = clean, "
                                                 "1 = real (with no -m, or -m clean/real or a shipped name)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes; table and warnings only."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print each image's scores as they come."),
) -> None:
    """Score bicubic (always) and a model on each dataset and scale; see ribsr_cli.evaluation for the protocol.

    `--baseline bicubic` only names the bicubic row, which is always there: it never removes the model.
    """
    from ribsr_cli import __version__
    from ribsr_cli.commands.options import parse_tile
    from ribsr_cli.evaluation import EvalError, check_pairs, degrade_kind, discover_dataset, evaluate

    if quiet and verbose:
        raise UsageError("choose one of -q and -v")
    degrade = degrade.lower()
    kind = degrade_kind(degrade)  # a malformed recipe is a one-line usage error here
    if ignore_lr:
        if kind == "real":
            raise UsageError("--ignore-lr (bicubic LR) and --degrade real exclude each other")
        degrade = "bicubic"
    if denoise is not None and no_model:
        raise UsageError("--denoise mixes two models; it cannot go with --no-model")
    if denoise is not None:
        from ribsr_cli.engine.interpolate import check_strength

        try:
            check_strength(denoise)
        except ValueError as exc:
            raise UsageError(str(exc))
    if baseline is not None and baseline.lower() not in BASELINES:
        raise UsageError(f"unknown baseline {baseline!r}: choose {', '.join(BASELINES)}")
    scales = parse_scales(scale)
    if no_model and model is not None:
        raise UsageError("-m and --no-model exclude each other")
    use_model = not no_model
    tile_value = parse_tile(tile)
    run_options = _run_options(device, precision, attention, tile_value, tta) if use_model else None
    device_used = None
    if use_model:  # the device reports name; a bad device or kernel is a usage error before any image is scored
        # (no engine: run_options is None, and the model's load reports that with its hint)
        device_used = str(run_options.resolve()[0]) if run_options is not None else device
    found = [discover_dataset(d) for d in datasets]  # an EvalError is a UsageError: one line, exit 2
    if degrade == "none":
        for ds in found:
            check_pairs(ds, scales)
    if len({ds.name for ds in found}) != len(found):
        raise UsageError("two datasets share a folder name; results would be ambiguous")

    from rich.progress import Progress

    results, warnings, lr_files, method_names = [], [], {}, []
    tiled_fallbacks: list[str] = []
    kernels_ran: list[str] = []
    precisions: list[str] = []
    models_ran: list[dict] = []
    for s in scales:
        methods = {}
        if use_model:  # loaded before the progress bar starts, one scale's model at a time
            upscaler = _model_upscaler(model, s, run_options, denoise)
            methods[upscaler.name] = upscaler
            models_ran.append({"name": upscaler.name, "scale": s, **upscaler.provenance()})
        console = _stderr_console()
        with Progress(transient=True, disable=quiet or verbose or not console.is_terminal, console=console) as progress:
            task = progress.add_task(f"x{s}", total=sum(len(ds.hr_files) for ds in found))

            def on_image(ds, s, name, scores) -> None:
                progress.advance(task)
                if verbose:
                    line = "  ".join(f"{m} {_fmt(v.psnr, 3)} dB / {_fmt(v.ssim, 4)}" for m, v in scores.items())
                    typer.echo(f"{ds.name} x{s} {name}: {line}", err=True)

            try:
                report = evaluate(found, [s], methods, crop_border=crop_border, test_y=not rgb,
                                  degrade=degrade, save_dir=save_images, on_image=on_image)
            except EvalError as exc:  # a UsageError already
                error: RibsrError | None = exc
            except Exception as exc:  # a model failing mid-run: one line, not a traceback
                error = RibsrError(f"evaluation failed at x{s}: {type(exc).__name__}: {exc}")
            else:
                error = None
        if error:  # raised after the progress bar has closed, so the line is not drawn over
            raise error
        results += report.results
        warnings += report.warnings
        for upscaler in methods.values():
            ran = upscaler.report
            warnings += [f"x{s}: {note}" for note in ran.notes + ran.fallbacks]
            tiled_fallbacks += [f"x{s}: {note}" for note in ran.fallbacks]
            kernels_ran += [k for k in ran.kernels if k not in kernels_ran]
            precisions += [ran.precision] if ran.precision not in precisions else []
        lr_files.update(report.lr_files_used)
        method_names += [m for m in dict.fromkeys(r.method for r in report.results) if m not in method_names]

    order = {ds.name: i for i, ds in enumerate(found)}
    results.sort(key=lambda r: (order[r.dataset], r.scale))
    for w in warnings:
        typer.echo(f"Warning: {w}", err=True)
    _print_tables(results, rgb, per_image, tiled_fallbacks, degrade)
    if kernels_ran and not quiet:
        typer.echo(f"attention kernel that ran: {', '.join(kernels_ran)}", err=True)

    args = {"datasets": {ds.name: str(ds.root.resolve()) for ds in found}, "scales": scales, "degrade": degrade,
            "rgb": rgb, "crop_border": crop_border, "tta": tta if use_model else None,
            "tile": tile_value if use_model else None, "device": device_used,
            "precision": (precisions[0] if len(precisions) == 1 else precisions) if use_model else None,
            "models": models_ran if use_model else None,
            "tiled_fallbacks": tiled_fallbacks, "attention_kernels": kernels_ran if use_model else None}
    if json_path is not None:
        doc = {"ribsr_version": __version__, "protocol": protocol(args, lr_files, method_names),
               "results": [r.as_dict() for r in results]}
        _write(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    if csv_path is not None:
        _write(csv_path, _csv_text(results))
    if not quiet:
        for path in (json_path, csv_path):
            if path is not None:
                typer.echo(f"wrote {path}", err=True)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
