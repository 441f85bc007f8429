"""What a bench result is measured on: the device, torch's switches, the thread count, the machine's load.

Timings mean little without them, so every result carries this record (and `--json` writes it).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from ribsr_cli.bench.timing import MEMORY_METHOD, TIMING_METHOD
from ribsr_cli.engine.runtime import cpu_model_name, precision_name


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def backend_flags() -> dict[str, Any]:
    """torch.backends switches that change which kernels run (or how fast)."""
    b = torch.backends
    probes: dict[str, Callable[[], Any]] = {
        "cudnn.enabled": lambda: b.cudnn.enabled,
        "cudnn.benchmark": lambda: b.cudnn.benchmark,
        "cuda.matmul.allow_tf32": lambda: b.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: b.cudnn.allow_tf32,
        "cuda.flash_sdp": b.cuda.flash_sdp_enabled,
        "cuda.mem_efficient_sdp": b.cuda.mem_efficient_sdp_enabled,
        "cuda.cudnn_sdp": b.cuda.cudnn_sdp_enabled,
        "cuda.math_sdp": b.cuda.math_sdp_enabled,
        "mkldnn": b.mkldnn.is_available,
        "openmp": b.openmp.is_available,
        "cpu.capability": b.cpu.get_cpu_capability,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
    }
    flags = {}
    for name, probe in probes.items():
        try:
            flags[name] = probe()
        except Exception as exc:  # a flag missing from this torch build
            flags[name] = f"n/a ({type(exc).__name__})"
    return flags


def bench_environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "dtype": precision_name(dtype),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "backends": backend_flags(),
        "timing": TIMING_METHOD[device.type],
        "memory": MEMORY_METHOD[device.type],
    }


def busy_warning(env: dict[str, Any]) -> str:
    """A warning when other processes already use the cores this run's threads need.

    OpenMP threads wait for each other at every op; when one is descheduled the
    others spin, so on an oversubscribed machine 2 threads can be several times
    slower than 1, and noisy. Timings then say more about the neighbours.
    """
    load, cores, threads = env.get("load_avg_1m"), env.get("cpu_count") or os.cpu_count() or 1, env["threads"]
    if env["device"] != "cpu" or load is None or load + threads <= cores + 0.5:
        return ""
    hint = " (try --threads 1)" if threads > 1 else ""
    return (f"machine busy: load {load:.1f} on {cores} cores before this run; with {threads} thread(s) the CPU "
            f"timings are noisy and can be several times slower{hint}")


def auto_threads(device: torch.device) -> tuple[int, str]:
    """torch's thread count, lowered to the cores other processes leave free (OpenMP's cliff, above)."""
    current, cores = torch.get_num_threads(), os.cpu_count() or 1
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return current, "torch default"
    load = os.getloadavg()[0]
    free = int(cores - load + 0.5)
    if free >= current:
        return current, "torch default"
    return max(1, free), f"auto: load {load:.1f} on {cores} cores"
