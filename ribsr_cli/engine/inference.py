"""Ready-made upscaling callables for the commands; the device/precision policy is `engine.runtime`."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from ribsr_cli.engine.attention import attention_report, configure_attention
from ribsr_cli.engine.runtime import pick_device, pick_dtype, precision_name, run_context
from ribsr_cli.engine.tiling import OutOfMemory, upscale_image
from ribsr_cli.pixels import grey_like, to_rgb

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
    """Move the model, set its attention kernel and dtype; returns the context to run it under (autocast,
    or for fp32 on CUDA TF32 off)."""
    dtype = pick_dtype(precision, device)
    choose_dtype = getattr(model, "choose_dtype", None)
    if choose_dtype is not None:  # a foreign (spandrel) model: fp32 where it marks half precision unsupported
        if precision == "auto" and device.type == "cpu":
            dtype = torch.float32  # CPU bf16's accuracy is measured for ribsr's own networks only (issue 14)
        dtype = choose_dtype(dtype)
    model.to(device).eval()
    if device.type == "cpu":  # big feature maps: reuse freed heap instead of mmap/munmap per layer
        from ribsr_cli.engine.allocator import tune_for_large_tensors

        tune_for_large_tensors()
    configure_attention(model, kernel=attention, strategy=strategy,
                        compute_dtype=None if dtype == torch.float32 else dtype)
    return run_context(device, dtype)


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
    denoise: float | None = None,
) -> tuple[str, Callable[[np.ndarray, int], np.ndarray]]:
    """(display name, fn(lr, scale) -> sr) for `ribsr eval`: uint8 in, uint8 out, grey kept grey.

    `fn.sha256`/`fn.source` (and `fn.components` for `denoise`, the clean/real interpolation) name the
    weights that ran, so reports need no second catalog lookup.

    Scores must not depend on a device's default mixed precision, so `auto` is fp32 here on every device
    (TF32 off on CUDA); bf16/fp16 only when asked. `fn.precision` records what ran ("fp32", "bf16", "fp16").
    """
    from ribsr_cli.engine.registry import resolve

    dev = pick_device(device)
    dtype = pick_dtype("fp32" if precision == "auto" else precision, dev)
    name, model = resolve(model_name_or_path, scale, arch, device="cpu", denoise=denoise)
    autocast = prepare(model, dev, precision_name(dtype), attention)

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
    run.precision = getattr(model, "run_precision", None) or precision_name(dtype)  # type: ignore[attr-defined]
    run.fallbacks += list(getattr(model, "notes", []))  # a foreign model's precision fallback, as a warning
    run.sha256 = getattr(model, "sha256", None)  # type: ignore[attr-defined]
    run.source = getattr(model, "source", None)  # type: ignore[attr-defined]
    run.components = getattr(model, "components", None)  # type: ignore[attr-defined]
    return name, run
