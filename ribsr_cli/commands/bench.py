"""`ribsr bench`: check the paper's speed/memory claim for RIB vs RPB attention on this machine.

Options, tables and the bar chart live here; what is measured, and how, is the package
ribsr_cli.bench (no CLI dependencies, also used by benchmarks/gpu_suite.py).
Exit codes: 0 done, 1 the RIB correctness check failed (nothing timed), 2 usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ribsr_cli.errors import UsageError
from rich.markup import escape

from ribsr_cli.fileutil import atomic_write_text

BAR_WIDTH = 36
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _parsed(parse: Callable[[str], Any], value: Optional[str]) -> Any:
    """Run a bench option parser, turning its ValueError into a clean usage error (exit 2). A callback runs
    while click parses, outside `cli.guarded`, so it reports through click's own BadParameter."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _windows_option(value: Optional[str]) -> Optional[list[int]]:
    from ribsr_cli.bench.options import parse_windows

    return _parsed(parse_windows, value)


def _size_option(value: Optional[str]) -> Optional[tuple[int, int]]:
    from ribsr_cli.bench.options import parse_size

    return _parsed(parse_size, value)


def _bar(value: float, largest: float) -> str:
    eighths = round(BAR_WIDTH * 8 * value / largest) if largest > 0 else 0
    full, rest = divmod(max(eighths, 1), 8)
    return ("█" * full + (_EIGHTHS[rest] if rest else "")).ljust(BAR_WIDTH)


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 10 else f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def _x(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}x"


def _spread(row: Any) -> str:
    return "—" if row.ms_p10 is None else f"{_ms(row.ms_p10)}–{_ms(row.ms_p90)}"


def _mb(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _header(console: Any, result: Any) -> None:
    env = result.env
    flags = ", ".join(f"{k}={v}" for k, v in env["backends"].items())
    console.print(f"[bold]ribsr bench[/] — {env['device_name']} ({env['device']}), torch {env['torch']}, "
                  f"{env['dtype']}, {env['threads']} thread(s) ({env['threads_chosen_by']}), preset {env['preset']} "
                  f"(heads {env['heads']}, head dim {env['head_dim']}, rank {env['rank']})", highlight=False)
    console.print(f"timing: {env['timing']}, interleaved repeats; peak memory: {env['memory']}", highlight=False)
    console.print(f"torch.backends: {flags}", style="dim", highlight=False)
    if env.get("busy_warning"):
        console.print(f"[bold yellow]warning:[/] {env['busy_warning']}", highlight=False)
    check = result.check
    console.print(f"check: RIB concatenated == explicit-bias attention, max abs error {check.max_abs_err:.2e} "
                  f"(tolerance {check.tolerance:g}) [green]ok[/]", highlight=False)


def _attention_table(result: Any) -> Any:
    from rich import box
    from rich.table import Table

    from ribsr_cli.bench.options import MAP_SIDE
    from ribsr_cli.bench.report import compare_attention

    mode = "forward + backward" if any(r.train for r in result.attention) else "forward"
    table = Table(box=box.SIMPLE_HEAD, title=f"Window attention, one {MAP_SIDE}x{MAP_SIDE} map ({MAP_SIDE * MAP_SIDE} tokens), {mode}",
                  title_justify="left")
    for name, justify in (("ws", "right"), ("variant", "left"), ("kernel that ran", "left"), ("median ms", "right"),
                          ("p10–p90", "right"), ("peak MiB", "right"), ("rpb/rib", "right"),
                          ("mem rpb/rib", "right"), ("rib/nope", "right"), ("note", "left")):
        table.add_column(escape(name), justify=justify, overflow="fold")
    previous = None
    for row, comp in zip(result.attention, compare_attention(result.attention)):
        if previous is not None and row.window != previous:
            table.add_section()
        previous = row.window
        kernel, note = (row.kernel, comp.note) if not row.skipped else ("—", row.skipped)
        style = "bold" if row.variant == "rib" else ("dim" if row.skipped else None)
        slower = comp.rpb_over_rib is not None and comp.rpb_over_rib < 1
        table.add_row(str(row.window), escape(row.variant), escape(kernel), _ms(row.ms_median), _spread(row),
                      _mb(row.peak_mb),
                      f"[red]{_x(comp.rpb_over_rib)}[/]" if slower else _x(comp.rpb_over_rib),
                      _x(comp.mem_rpb_over_rib), _x(comp.rib_over_nope), escape(note), style=style)
    return table


def _bars(console: Any, result: Any) -> None:
    """Latency per window size as unicode bars, scaled to the slowest row of each window."""
    console.print("[bold]Latency per window size[/] (bars scaled to the slowest row of each window)")
    for ws in dict.fromkeys(r.window for r in result.attention):
        rows = [r for r in result.attention if r.window == ws and r.ms_median is not None]
        if not rows:
            continue
        largest = max(r.ms_median for r in rows)
        for i, row in enumerate(rows):
            label = f"ws {ws:<3}" if i == 0 else " " * 6
            colour = "green" if row.variant.startswith("rib") else ("cyan" if row.variant == "nope" else "yellow")
            console.print(f"{label} {escape(row.variant.ljust(10))} [{colour}]{_bar(row.ms_median, largest)}[/] "
                          f"{_ms(row.ms_median)} ms", highlight=False)


def _network_table(result: Any) -> Any:
    from rich import box
    from rich.table import Table

    from ribsr_cli.bench.report import compare_network, slower_note

    table = Table(box=box.SIMPLE_HEAD, title="Whole network, same architecture (RPB time / row time in 'rpb/this')", title_justify="left")
    for name, justify in (("preset", "left"), ("attn", "left"), ("mode", "left"), ("input", "right"),
                          ("kernels [strategy]", "left"), ("median ms", "right"), ("p10–p90", "right"),
                          ("peak MiB", "right"), ("rpb/this", "right"), ("note", "left")):
        table.add_column(escape(name), justify=justify, overflow="fold")
    for row, ratio in zip(result.network, compare_network(result.network)):
        note = row.skipped or row.note or (slower_note(ratio) if row.attn_type.startswith("RIB") else "")
        table.add_row(row.preset, row.attn_type, "train step" if row.train else "inference", row.input,
                      escape(row.kernel) if not row.skipped else "—", _ms(row.ms_median), _spread(row),
                      _mb(row.peak_mb), _x(ratio), escape(note), style="bold" if row.attn_type == "RIB" else None)
    return table


def command(
    quick: bool = typer.Option(False, "--quick", help="Under a minute on 2 CPU cores: windows 8,16,32, small network input, few repeats."),
    windows: Optional[str] = typer.Option(None, "--windows", metavar="WS,WS...", callback=_windows_option, help="Window sizes, e.g. 8,16,32,64 (default 8,16,32,48,64,96)."),
    preset: str = typer.Option("SST-light", "--preset", "--model", "-m", help="Architecture preset (heads/head dim/rank and the network), e.g. SST-light or SST-x2, or a shipped/stored model name (its architecture)."),
    size: Optional[str] = typer.Option(None, "--size", metavar="WxH", callback=_size_option, help="Network output size WxH (default 1280x720; --quick 256x144)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="auto|fp32|bf16|fp16", show_default=False,
                                            help="auto (default): bf16 on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16; see ribsr info), fp32 on other CPUs and on MPS."),
    dtype_alias: Optional[str] = typer.Option(None, "--dtype", hidden=True, help="Old name of --precision."),
    repeats: Optional[int] = typer.Option(None, "--repeats", min=1, metavar="N", help="Timed repeats per row (default: sized to ~1.5 s per row, capped)."),
    train: bool = typer.Option(False, "--train", help="Time forward+backward, and one network training step."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, metavar="N", help="Training-step batch size (default 4; --quick 2)."),
    patch: Optional[int] = typer.Option(None, "--patch", min=8, metavar="PX", help="Training-step LR patch side (default 64; --quick 32)."),
    all_kernels: bool = typer.Option(False, "--all-kernels", help="Also time RIB through each available kernel."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N", help="CPU threads (default: all cores, fewer when other processes already keep cores busy)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write env, attention, network and check to this JSON file."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Save latency and memory vs window size as a PNG (needs matplotlib)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and a one-line summary."),
    corrupt_rib: bool = typer.Option(False, "--_corrupt-rib", hidden=True, help="Break the RIB path on purpose (tests the check)."),
) -> None:
    """Time RIB against RPB window attention and networks, side by side, after checking RIB is exact."""
    from rich.console import Console

    from ribsr_cli import bench as bm
    from ribsr_cli.commands.info import environment
    from ribsr_cli.commands.options import merge_alias
    from ribsr_cli.engine.runtime import pick_dtype

    dtype = merge_alias(precision, dtype_alias, "--precision", "--dtype") or "auto"
    console, err = Console(quiet=quiet), Console(stderr=True)
    if not console.is_terminal:  # logs and pipes: wide enough for the tables instead of 80 columns
        console.width = 150
    try:
        pick_dtype(dtype, bm.bench_device(device))
        bm.resolve_preset(preset)
    except (ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: torch rejects a --device string
        raise UsageError(str(exc).splitlines()[0].strip("'\"")) from None
    if plot is not None and not bm.plot_available():
        raise UsageError("--plot", "needs matplotlib: pip install 'ribsr[plot]' (or pip install matplotlib)")
    opts = bm.Options(quick=quick, windows=windows, preset=preset, size=size, device=device, dtype=dtype,
                      repeats=repeats, train=train, all_kernels=all_kernels, batch=batch, patch=patch,
                      threads=threads, corrupt_rib=corrupt_rib)

    def progress(message: str) -> None:
        if not quiet:
            err.print(f"[dim]… {message}[/]", highlight=False, soft_wrap=True)

    try:
        result = bm.run(opts, progress)
    except bm.RibMismatch as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}. The concatenated RIB attention does not reproduce the explicit "
                  "bias, so its timings would compare different computations; nothing was timed.", highlight=False)
        raise typer.Exit(1) from None
    result.env = {**environment(), **result.env}
    _header(console, result)
    if result.attention:
        console.print(_attention_table(result))
        _bars(console, result)
    if result.network:
        console.print(_network_table(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_out, json.dumps(result.as_json(), indent=2))
        progress(f"wrote {json_out}")
    if plot is not None:
        bm.save_plot(result, plot)
        progress(f"wrote {plot}")
    typer.echo(f"{bm.summary(result)} [{result.env['wall_s']:.0f} s]")
