"""Attention back-ends and the choice between them.

Every back-end computes softmax(q k^T * scale + bias) v on (B, heads, N, D)
tensors and returns the name of the kernel that actually ran, so commands can
report it instead of guessing:

- ``flash``: the ``flash_attn`` package (CUDA, fp16/bf16, no bias);
- ``sdpa``:  PyTorch's ``scaled_dot_product_attention``; on CUDA in fp16/bf16
  without a bias it asks for the FlashAttention / cuDNN kernels, and (unless
  ``strict``) falls back to the memory-efficient kernel, then math, on GPUs
  that have neither (before sm80); on CPU its fused (flash-style) CPU kernel,
  which also accepts an additive mask;
- ``math``:  explicit matmul + softmax + matmul in fp32, the reference for checks;
- ``auto``:  ``flash`` when importable and applicable, else ``sdpa``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ribsr_cli.errors import RibsrError
from ribsr_cli.engine.runtime import precision_name

KERNELS = ("auto", "flash", "sdpa", "math")

#: Most windows (the batch dimension) one kernel call takes. FlashAttention and the memory-efficient
#: kernel launch one thread block per (query block, head, batch entry) with the batch on grid axis y or z,
#: which CUDA caps at 65,535: more fails with "invalid configuration argument", not an out-of-memory, so
#: the tile fallback would never see it. `attend` splits larger calls; a test lowers this to force it.
MAX_WINDOWS_PER_CALL = 65_535

_SDPA_NAMES = {
    int(SDPBackend.MATH): "sdpa:math",
    int(SDPBackend.FLASH_ATTENTION): "sdpa:flash",
    int(SDPBackend.EFFICIENT_ATTENTION): "sdpa:efficient",
    int(SDPBackend.CUDNN_ATTENTION): "sdpa:cudnn",
}


def check_kernel(kernel: str) -> None:
    """One message for an unknown kernel name, wherever it is first seen (CLI option, configure, attend)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


class KernelUnavailable(RibsrError, RuntimeError):
    """The requested attention kernel cannot run these tensors on this device."""


@functools.lru_cache(maxsize=1)
def flash_attn_func() -> Callable | None:
    """The ``flash_attn`` package's entry point, or None when it is not installed."""
    try:
        from flash_attn import flash_attn_func as fn  # type: ignore[import-not-found]
    except Exception:  # ImportError, or a build that does not match this torch/CUDA
        return None
    return fn


def available_kernels(device: torch.device | str = "cpu") -> list[str]:
    """Kernels that can run on `device` (for `ribsr info` and `bench`)."""
    device = torch.device(device)
    names = ["math", "sdpa"]
    if device.type == "cuda" and flash_attn_func() is not None:
        names.insert(0, "flash")
    return names


def flash_refusal(device_type: str, dtype: torch.dtype) -> str | None:
    """Why the flash-attn kernel cannot run on this device type in this dtype, or None when it can (head dim
    permitting): the one statement of its requirements, read by the `auto` rule (`_flash_ok`) and, before any
    file, by `--attention flash` (`runner.check_attention`)."""
    if device_type != "cuda":
        return f"needs a CUDA device; this run is on {device_type} (use auto, sdpa or math)"
    if flash_attn_func() is None:
        return ("needs the flash-attn package (pip install -e '.[flash]'); "
                "use auto or sdpa for PyTorch's own FlashAttention kernel")
    if dtype not in (torch.float16, torch.bfloat16):
        return "needs --precision bf16 or fp16"
    return None


def _flash_ok(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (bias is None and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256
            and flash_refusal(q.device.type, q.dtype) is None)


def _math(q, k, v, bias, scale):
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _flash(q, k, v, scale):
    # flash_attn takes (B, N, heads, D)
    out = flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    return out.transpose(1, 2)


def _sdp_flags() -> tuple[bool, ...]:
    """The backend switches `sdpa_kernel` sets: part of the choice, so part of its cache key."""
    c = torch.backends.cuda
    return (c.flash_sdp_enabled(), c.mem_efficient_sdp_enabled(), c.math_sdp_enabled(), c.cudnn_sdp_enabled())


@functools.lru_cache(maxsize=256)
def _sdpa_choice(device_type: str, dtype: torch.dtype, q_shape, k_shape, v_shape, mask_shape,
                 flags: tuple[bool, ...] = (), grads: tuple[bool, ...] = (False,) * 4) -> int:
    """Which SDPA kernel PyTorch will pick for this signature (cached: it depends on shapes, `flags` and
    which of q, k, v, mask need gradients: on CPU a mask that needs one sends SDPA to the math kernel, so a
    probe without gradients would name a kernel that did not run)."""
    dev = "cuda" if device_type == "cuda" else "cpu"
    def meta(shape, grad):
        return torch.empty(shape, dtype=dtype, device=dev, requires_grad=grad) if shape else None
    q, k, v, mask = (meta(shape, grad) for shape, grad in zip((q_shape, k_shape, v_shape, mask_shape), grads))
    return int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=1.0))


#: What `sdpa` asks for on CUDA in fp16/bf16 without a bias, and what it falls back to when neither
#: exists for these tensors on this GPU (FlashAttention and cuDNN attention need sm80+).
_FUSED = (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION)
_FALLBACK = (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
FALLBACK_NOTE = " (fallback: no flash/cudnn kernel here)"


def _wants_fused(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return q.is_cuda and bias is None and q.dtype in (torch.float16, torch.bfloat16)


def _choice(q, k, v, mask, scale) -> int:
    """Which SDPA kernel PyTorch picks for these tensors under the current backend flags."""
    if q.is_cuda:  # the choice is host-side logic on shapes/flags; cheap enough to ask every call
        return int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=scale))
    grads = tuple(t is not None and t.requires_grad for t in (q, k, v, mask))  # SDPA checks this even under no_grad
    return _sdpa_choice("cpu", q.dtype, tuple(q.shape), tuple(k.shape), tuple(v.shape),
                        None if mask is None else tuple(mask.shape), _sdp_flags(), grads)


def _fused_choice(q, k, v, scale) -> int | None:
    """The FlashAttention/cuDNN kernel SDPA would run, or None when neither accepts these tensors here."""
    with sdpa_kernel(list(_FUSED)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDPA warns once per rejected kernel; the caller reports the outcome
        try:
            choice = _choice(q, k, v, None, scale)
        except RuntimeError:  # "No viable backend": e.g. a T4/V100 (sm75/sm70) in bf16
            return None
    return choice if choice in {int(b) for b in _FUSED} else None  # some versions return ERROR (-1) instead


def _sdpa(q, k, v, bias, scale, strict: bool = False):
    mask = None if bias is None else bias.to(q.dtype)
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(0)
    if not _wants_fused(q, bias):
        choice = _choice(q, k, v, mask, scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), _sdpa_name(choice)
    choice = _fused_choice(q, k, v, scale)
    if choice is not None:
        with sdpa_kernel(list(_FUSED)):
            return F.scaled_dot_product_attention(q, k, v, scale=scale), _sdpa_name(choice)
    if strict:  # the benchmark measures the fused kernel or nothing: a fallback row would mislead
        raise KernelUnavailable(f"no FlashAttention or cuDNN attention kernel for {precision_name(q.dtype)} "
                                f"head dim {q.shape[-1]} on this GPU")
    with sdpa_kernel(list(_FALLBACK)):
        choice = _choice(q, k, v, None, scale)
        return F.scaled_dot_product_attention(q, k, v, scale=scale), _sdpa_name(choice) + FALLBACK_NOTE


def _sdpa_name(choice: int) -> str:
    return _SDPA_NAMES.get(choice, f"sdpa:{choice}")


def _attend_once(q, k, v, bias, scale: float, kernel: str, strict: bool) -> tuple[torch.Tensor, str]:
    if kernel == "auto":
        kernel = "flash" if _flash_ok(q, bias) else "sdpa"
    if kernel == "math":
        return _math(q, k, v, bias, scale), "math"
    if kernel == "sdpa":
        return _sdpa(q, k, v, bias, scale, strict)
    if kernel == "flash":
        if not _flash_ok(q, bias):
            raise KernelUnavailable(
                "the flash_attn kernel needs the flash-attn package, a CUDA device, fp16/bf16, "
                "head dim a multiple of 8 (<=256) and no additive bias"
            )
        return _flash(q, k, v, scale), "flash_attn"
    check_kernel(kernel)
    raise AssertionError(f"kernel {kernel!r} is in KERNELS but not dispatched")


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scale: float,
    kernel: str = "auto",
    strict: bool = False,
) -> tuple[torch.Tensor, str]:
    """softmax(q k^T * scale + bias) v with the chosen kernel; returns (output, kernel that ran).

    More than `MAX_WINDOWS_PER_CALL` windows are attended in slices of that many (windows are
    independent, so the result is the same). `strict` forbids the SDPA fallback described above.
    """
    windows = q.shape[0]
    if windows <= MAX_WINDOWS_PER_CALL:
        return _attend_once(q, k, v, bias, scale, kernel, strict)
    per_window_bias = bias is not None and bias.dim() == 4 and bias.shape[0] == windows
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    ran = ""
    for start in range(0, windows, MAX_WINDOWS_PER_CALL):
        part = slice(start, start + MAX_WINDOWS_PER_CALL)
        out[part], ran_part = _attend_once(q[part], k[part], v[part], bias[part] if per_window_bias else bias,
                                           scale, kernel, strict)
        ran = ran or ran_part
    return out, ran
