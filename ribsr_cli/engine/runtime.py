"""The one runtime policy: which device, which precision, how much memory is free, and the context a
network runs under. Every command (upscale, eval, bench, train, export) asks here, so `--device` and
`--precision` mean the same everywhere and a policy change is one edit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch

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


#: the device types training runs on
TRAINING_DEVICE_TYPES = ("cuda", "cpu")


def pick_training_device(device: torch.device | str = "auto") -> torch.device:
    """`pick_device` for training: `auto` is CUDA when available, else the CPU, never MPS; an explicit
    device must be CUDA or the CPU (and available).

    Training is kept to the devices it is tested on: the CPU (every training test, DDP over gloo) and CUDA
    (NCCL DDP, bf16 autocast). Nothing has checked the training step, its bf16 autocast or the checkpoint
    round trip on MPS, so `auto` does not wander onto it. Which CUDA GPU a bare `cuda` means under torchrun
    (LOCAL_RANK) is the caller's (`training.ddp.training_device`).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = pick_device(str(device))
    if dev.type not in TRAINING_DEVICE_TYPES:
        raise ValueError(f"training runs on {' or '.join(TRAINING_DEVICE_TYPES)}, not {dev.type!r}")
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


#: the precisions training accepts (fp16 would need loss scaling)
TRAINING_PRECISIONS = ("auto", "fp32")


def pick_training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The inference policy (`pick_dtype`) applied to training: `auto` is bf16 where `pick_dtype("auto")`
    says bf16 (CUDA from sm80, CPUs with native bf16: 1.5-2x faster steps there) and fp32 everywhere else,
    including CUDA before sm80, where inference would take fp16. fp16 and bf16 are not offered explicitly."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"training precision {precision!r}: use {' or '.join(TRAINING_PRECISIONS)}")
    if precision == "auto" and pick_dtype("auto", device) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def kernel_probe_dtype(device: torch.device) -> torch.dtype:
    """The dtype `ribsr info` probes the attention kernels in: what `--precision auto` runs on CUDA (bf16
    from sm80, fp16 before: not `torch.cuda.is_bf16_supported()`, which says yes before sm80 too), fp32
    elsewhere (the CPU's fp32 kernels, the ones every CPU has)."""
    return pick_dtype("auto", device) if device.type == "cuda" else torch.float32


@functools.lru_cache(maxsize=None)
def cpu_model_name() -> str:
    """The CPU's model name as the OS reports it (`/proc/cpuinfo`'s "model name"), else what `platform` knows;
    read once per process (results are labelled with it, and the strategy probe keys its answers by it)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def pick_memory_format(device: torch.device) -> torch.memory_format:
    """How ribsr's networks store feature maps on `device`: channels-last (NHWC) on a CPU, where oneDNN's
    convolutions take it without reordering, the channel LayerNorm reads it in place and the window
    partition is a single gather (ribsr-s x2 at 512x512, 1 thread, AMD EPYC, interleaved medians:
    fp32 1.14x, bf16 1.09x faster than NCHW; `benchmarks/engine_speed.py`); the default layout elsewhere,
    where it has not been measured."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def precision_name(dtype: torch.dtype) -> str:
    """The CLI's precision name for a dtype (`DTYPES`), or torch's own name for any other."""
    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype))


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


#: precision names as the CLI spells them, and the dtype each one runs
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_from_name(name: str) -> torch.dtype:
    """`fp32`/`bf16`/`fp16` → the torch dtype (no `auto`: resolve that with `pick_dtype`)."""
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


#: what free memory is taken to be when the OS will not say (no /proc/meminfo): small enough to stay safe
UNKNOWN_FREE_MEMORY = 4 * 2**30


#: what physical memory is taken to be when the OS will not say (not a POSIX system)
UNKNOWN_TOTAL_MEMORY = 8 * 2**30


def total_memory_bytes(device: torch.device) -> int:
    """Bytes of memory `device` has in all: a CUDA device's own memory, else the machine's physical RAM
    (the CPU's, which MPS shares)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf, or no such name on this OS
        return UNKNOWN_TOTAL_MEMORY


def free_memory_bytes(device: torch.device) -> int:
    """Bytes free for activations: CUDA's free memory on its device, else the kernel's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return UNKNOWN_FREE_MEMORY


def run_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """What a forward runs under: autocast to `dtype`, or for fp32 exact matmuls (TF32 off on CUDA)."""
    if dtype == torch.float32:
        return TF32Off() if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def training_context(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """What a training step runs under: bf16 autocast when `dtype` (from `pick_training_dtype`) is bf16,
    else a disabled autocast.

    Not `run_context`: an fp32 training step keeps PyTorch's TF32 defaults on CUDA (cuDNN convolutions in
    TF32) instead of `TF32Off`'s exact fp32, since training wants the speed and the step is no exactness
    check; and it is always one `torch.autocast`, enabled or not, reused for every step."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def attention_core_dtype(device: torch.device, dtype: torch.dtype, needs_grad: bool) -> torch.dtype:
    """The dtype an attention core computes in, given the run's `dtype`.

    The one exception to "the core runs in the run's precision": CPU training keeps it fp32, because
    PyTorch's CPU flash-attention backward is ~4x slower in bf16 than in fp32 (issue 14, profiled on ribsr-s
    training); under bf16 autocast the convolutions still take bf16.
    """
    if device.type == "cpu" and needs_grad and dtype != torch.float32:
        return torch.float32
    return dtype
