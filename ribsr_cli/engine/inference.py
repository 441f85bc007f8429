"""Device/precision choice and ready-made upscaling callables for the commands."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from ribsr_cli.engine.attention import attention_report, configure_attention
from ribsr_cli.engine.tiling import OutOfMemory, upscale_image
from ribsr_cli.pixels import grey_like, to_rgb

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(device: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} asked for, but MPS is not available")
    return dev


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 there is slower and less exact); bf16 on CUDA when supported."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def check_run_options(device: str, precision: str, attention: str) -> torch.device:
    """Validate --device/--precision/--attention without a model, so a typo is reported even when no file
    needs the model (a finished batch re-run, a dry run)."""
    from ribsr_cli.engine.kernels import check_kernel

    dev = pick_device(device)
    pick_dtype(precision, dev)
    check_kernel(attention)
    return dev


def prepare(model: torch.nn.Module, device: torch.device, precision: str = "auto", attention: str = "auto",
            strategy: str = "auto") -> contextlib.AbstractContextManager:
    """Move the model, set its attention kernel and dtype; returns the autocast context to run it under."""
    dtype = pick_dtype(precision, device)
    model.to(device).eval()
    configure_attention(model, kernel=attention, strategy=strategy,
                        compute_dtype=None if dtype == torch.float32 else dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_upscaler(
    model_name_or_path: str | None,
    scale: int,
    *,
    tile: int = 0,
    tta: bool = False,
    device: str = "auto",
    arch: str | None = None,
    precision: str = "auto",
    attention: str = "auto",
) -> tuple[str, Callable[[np.ndarray, int], np.ndarray]]:
    """(display name, fn(lr, scale) -> sr) for `ribsr eval`: uint8 in, uint8 out, grey kept grey."""
    from ribsr_cli.engine.registry import resolve

    dev = pick_device(device)
    name, model = resolve(model_name_or_path, scale, arch, device="cpu")
    autocast = prepare(model, dev, precision, attention)

    def upscale_whole_or_tiled(rgb: np.ndarray, s: int) -> np.ndarray:
        """Whole image unless memory says no; then tiles, halving until it fits, and noted in `run.fallbacks`."""
        size = tile
        while True:
            try:
                return upscale_image(model, rgb, s, tile=size, device=dev, tta=tta, autocast=autocast)
            except OutOfMemory:
                size = (size or 1024) // 2 if size else 1024
                if size < 64:
                    raise
                run.fallbacks.append(f"{rgb.shape[1]}x{rgb.shape[0]} image tiled at {size} px (out of memory whole)")

    def run(lr: np.ndarray, s: int) -> np.ndarray:
        sr = grey_like(upscale_whole_or_tiled(to_rgb(lr), s), lr)
        for k in attention_report(model)["kernels"]:
            if k not in run.kernels:
                run.kernels.append(k)
        return sr

    run.fallbacks = []  # type: ignore[attr-defined]
    run.kernels = []  # type: ignore[attr-defined]  # attention kernels that actually ran, in first-seen order
    return name, run
