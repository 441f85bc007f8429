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


def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX-BF16 or AVX512-BF16) and oneDNN can use it.

    `torch.ops.mkldnn._is_mkldnn_bf16_supported()` alone is not enough: it also says yes on plain AVX512
    CPUs, where oneDNN emulates bf16 and autocast is slower than fp32. `torch.cpu.get_capabilities()` (the
    public form of cpuinfo's flags) says which instructions exist; older torch has the private checks.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    caps_fn = getattr(torch.cpu, "get_capabilities", None)
    if caps_fn is not None:
        caps = caps_fn()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def auto_precision(device: torch.device) -> str:
    """What `--precision auto` runs on `device` (for `ribsr info` and reports)."""
    return precision_name(pick_dtype("auto", device))


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto`: on CUDA bf16 from sm80 (Ampere) on, fp16 before; on a CPU with native bf16 (AMX/AVX512-BF16)
    bf16 autocast (2x faster, output within 50+ dB of fp32, scores within 0.02 dB), fp32 on other CPUs
    (bf16 emulated there is slower than fp32) and on MPS.

    Before sm80 bf16 is only emulated and no fused attention kernel takes it (`is_bf16_supported()` still
    says yes there), while the memory-efficient kernel takes fp16 from sm50 on.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_native_bf16() else torch.float32
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class TF32Off:
    """Reusable (and re-entrant) context: true fp32 matmuls and cuDNN convolutions inside, flags restored after.

    PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa inputs), which moves a network's
    output by ~1e-3: an fp32 run on CUDA asked for exactness, so it gets it.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[bool, bool]] = []

    def __enter__(self) -> "TF32Off":
        b = torch.backends
        self._saved.append((b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32))
        b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved.pop()


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
    if dtype == torch.float32:
        return TF32Off() if device.type == "cuda" else contextlib.nullcontext()
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
