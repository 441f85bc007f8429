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
    from ribsr_cli.engine.runtime import auto_precision, cpu_native_bf16, pick_memory_format
    from ribsr_cli.engine.kernels import flash_attn_func

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
        # AMX-BF16 / AVX512-BF16: `--precision auto` is bf16 autocast on such CPUs, fp32 on others
        "cpu_native_bf16": cpu_native_bf16(),
        "cpu_auto_precision": auto_precision(torch.device("cpu")),
        "cpu_memory_format": str(pick_memory_format(torch.device("cpu"))).removeprefix("torch."),
        "attention_kernels": {"cpu": kernels_that_run("cpu")},
        # RIB strategy `auto` on this CPU: layer shapes probed so far (bias vs concat, ms), and where they live
        "cpu_rib_strategy": cpu_strategy_table(),
    }
    if torch.cuda.is_available():
        info["attention_kernels"]["cuda"] = kernels_that_run("cuda")
        info["cuda_version"] = torch.version.cuda
        info["sdpa_flash_enabled"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def cpu_strategy_table() -> dict:
    """What `--strategy auto` takes on this CPU per layer shape, from the strategy probe's cache: shapes are
    measured the first time a model uses them (`engine/strategy_probe.py`), so a fresh machine lists none."""
    from ribsr_cli.engine import strategy_probe

    if not strategy_probe.probing_enabled():
        return {"probe": f"off ({strategy_probe.DISABLE_ENV}=0): the built-in table decides"}
    decisions = strategy_probe.cached_decisions()
    return {"cache": str(strategy_probe.cache_path()),
            "shapes": {shape: ("bias" if d.get("bias_faster") else "concat")
                       + (f" ({d['bias_ms']} vs {d['concat_ms']} ms)" if "bias_ms" in d else "")
                       for shape, d in sorted(decisions.items())}}


def kernels_that_run(device: str) -> dict[str, str]:
    """For each `--attention` choice, the kernel that runs on `device`, named as runs report it
    (`sdpa:flash`, `math`, `flash_attn`), or why it cannot run there.

    Found by running the choice on a small window-attention call shaped as the engine makes them (on the
    CPU in fp32 with the RIB bias as a mask, on CUDA in the dtype `--precision auto` runs without one), so the
    names cannot drift apart.
    """
    import torch

    from ribsr_cli.engine.kernels import KERNELS, KernelUnavailable, attend
    from ribsr_cli.engine.runtime import kernel_probe_dtype

    cuda = device == "cuda"
    dtype = kernel_probe_dtype(torch.device(device))
    q, k, v = (torch.randn(4, 2, 64, 32, device=device, dtype=dtype) for _ in range(3))
    bias = None if cuda else torch.zeros(2, 64, 64, device=device, dtype=dtype)
    names = {}
    for choice in KERNELS:
        try:
            names[choice] = attend(q, k, v, bias, scale=32 ** -0.5, kernel=choice)[1]
        except (KernelUnavailable, RuntimeError) as exc:
            names[choice] = f"unavailable: {str(exc).splitlines()[0]}"
    return names


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
