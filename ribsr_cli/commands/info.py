"""`ribsr info`: what this machine offers the engine, so users can tell which kernel will run."""

from __future__ import annotations

import json
import os
import platform

import typer


def environment() -> dict:
    """Facts about torch, devices and attention kernels (also embedded in bench/eval JSON)."""
    import torch

    from ribsr_cli import __version__
    from ribsr_cli.engine.kernels import available_kernels, flash_attn_func

    info = {
        "ribsr": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "flash_attn_package": flash_attn_func() is not None,
        "attention_kernels": {"cpu": available_kernels("cpu")},
    }
    if torch.cuda.is_available():
        info["attention_kernels"]["cuda"] = available_kernels("cuda")
        info["cuda_version"] = torch.version.cuda
        info["sdpa_flash_enabled"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    info = environment()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ribsr environment", show_header=False)
    for key, value in info.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value) if value else "none"
        table.add_row(key, str(value))
    Console().print(table)
