"""`ribsr models`: the models a photographer can use (shipped and stored), and the model store.

Listing reads only JSON (the shipped manifest and the store's cards), so it answers without importing torch;
the architecture presets, which have no weights, are shown only with `--presets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

EXAMPLES = [
    "ribsr models                                     # shipped and stored models",
    "ribsr models add SST-light_x4.pth --name sst-light-x4   # the authors' checkpoint, detected and proven",
    "ribsr upscale photo.jpg -s 4 -m sst-light-x4      # then use it by name",
    "ribsr models add my.pth --arch SST-x2            # when the key layout leaves the architecture open",
    "ribsr models remove sst-light-x4",
    "ribsr models --presets                           # architecture presets for --arch",
]

app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _quality(entry) -> str:
    set5 = entry.metrics.get("Set5", {})
    return f"{set5['psnr_y']:.2f} dB" if "psnr_y" in set5 else ""


@app.callback(invoke_without_command=True)
def listing(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    presets: bool = typer.Option(False, "--presets", help="Also list the architecture presets (for --arch)."),
) -> None:
    """List the models usable with -m NAME: shipped first, then the ones you stored."""
    if ctx.invoked_subcommand is not None:
        return
    from ribsr_cli.catalog import all_models, store_dir, weights_dir

    entries = all_models()
    if as_json:
        data = {"models": [e.summary() for e in entries], "weights_dir": str(weights_dir()),
                "store_dir": str(store_dir())}
        if presets:
            data["presets"] = _preset_rows()
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Models (use with -m NAME)", title_justify="left")
    for col in ("name", "scale", "params", "arch", "Set5 PSNR-Y", "CPU s/MP", "source"):
        table.add_column(col, no_wrap=col == "name")
    for e in entries:
        speed = f"{e.cpu_seconds_per_input_mp:.1f}" if e.cpu_seconds_per_input_mp else ""
        table.add_row(e.name, f"x{e.scale}", f"{e.params / 1e6:.2f} M", e.arch_name, _quality(e), speed,
                      f"{e.source}, default" if e.default else e.source)
    if entries:
        console.print(table)
    else:
        console.print(f"[yellow]no models found[/] (shipped weights looked for in {weights_dir()})")
    # where they live: one line per source (the full path of each file is in --json)
    console.print(f"shipped: {weights_dir()}", highlight=False, soft_wrap=True)
    console.print(f"stored:  {store_dir()}  (add checkpoints with `ribsr models add FILE`)", highlight=False,
                  soft_wrap=True)
    if presets:
        ptable = Table(title="Architecture presets (use with --arch; no weights)", title_justify="left")
        for col in ("name", "dim", "blocks", "windows", "heads", "ranks", "upsampler", "params"):
            ptable.add_column(col)
        for row in _preset_rows():
            ptable.add_row(row["name"], str(row["dim"]), str(row["n_blocks"]), str(row["window_sizes"]),
                           str(row["num_heads"]), str(row["ranks"]), row["upsampler_type"],
                           f"{row['params'] / 1e6:.2f} M")
        console.print(ptable)


def _preset_rows() -> list[dict]:
    from ribsr_cli.engine import PRESETS, build_model

    rows = []
    for name, a in PRESETS.items():
        params = sum(p.numel() for p in build_model(a).parameters())
        rows.append({"name": name, "dim": a["dim"], "n_blocks": a["n_blocks"], "window_sizes": a["window_sizes"],
                     "num_heads": a["num_heads"][0], "ranks": a["ranks"], "upsampler_type": a["upsampler_type"],
                     "params": params})
    return rows


@app.command("add")
def add(
    path: Path = typer.Argument(..., metavar="FILE", help="Checkpoint: .pth/.pt (loaded with weights_only=True) or .safetensors."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Name to use with -m (default: the file's stem)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture preset or JSON/YAML network_g, when detection cannot tell."),
) -> None:
    """Prove a checkpoint with a test forward and keep it in the store, usable as -m NAME."""
    from ribsr_cli.engine.store import add_model

    entry = add_model(path, name, arch)
    typer.echo(f"added {entry.name}: x{entry.scale} {entry.arch_name}, {entry.params / 1e6:.2f} M params, "
               f"sha256 {entry.sha256[:12]}… -> {entry.path}")


@app.command("remove")
def remove(name: str = typer.Argument(..., metavar="NAME", help="A stored model's name.")) -> None:
    """Delete a stored model (shipped models cannot be removed)."""
    from ribsr_cli.catalog import store_dir
    from ribsr_cli.engine.store import remove_model

    typer.echo(f"removed {remove_model(name)} from {store_dir()}")
