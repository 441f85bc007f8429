"""`ribsr models`: the architecture presets and the shipped weights."""

from __future__ import annotations

import json

import typer


def command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    from ribsr_cli.engine import PRESETS, build_model
    from ribsr_cli.engine.registry import manifest, weights_dir

    shipped = manifest()
    if as_json:
        typer.echo(json.dumps({"presets": PRESETS, "shipped": shipped}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Shipped weights ({weights_dir()})")
    for col in ("name", "scale", "architecture", "params", "Set5 PSNR-Y", "Set14 PSNR-Y", "default"):
        table.add_column(col)
    for e in shipped:
        m = e.get("metrics", {})
        table.add_row(e["name"], f"x{e['scale']}", e.get("arch_name", "?"), f"{e.get('params', 0) / 1e6:.2f} M",
                      str(m.get("Set5", {}).get("psnr_y", "?")), str(m.get("Set14", {}).get("psnr_y", "?")),
                      "yes" if e.get("default") else "")
    if not shipped:
        console.print("[yellow]no shipped weights found[/]")
    else:
        console.print(table)
    presets = Table(title="Architecture presets (use with --arch)")
    for col in ("name", "dim", "blocks", "windows", "heads", "ranks", "upsampler", "params"):
        presets.add_column(col)
    for name, a in PRESETS.items():
        params = sum(p.numel() for p in build_model(a).parameters())
        presets.add_row(name, str(a["dim"]), str(a["n_blocks"]), str(a["window_sizes"]), str(a["num_heads"][0]),
                        str(a["ranks"]), a["upsampler_type"], f"{params / 1e6:.2f} M")
    console.print(presets)
