"""Attention back-ends and the choice between them.

Every back-end computes softmax(q k^T * scale + bias) v on (B, heads, N, D)
tensors and returns the name of the kernel that actually ran, so commands can
report it instead of guessing:

- ``flash``: the ``flash_attn`` package (CUDA, fp16/bf16, no bias);
- ``sdpa``:  PyTorch's ``scaled_dot_product_attention``; on CUDA restricted to
  its FlashAttention / cuDNN kernels when no bias is passed, on CPU its fused
  (flash-style) CPU kernel, which also accepts an additive mask;
- ``math``:  explicit matmul + softmax + matmul in fp32, the reference for checks;
- ``auto``:  ``flash`` when importable and applicable, else ``sdpa``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = ("auto", "flash", "sdpa", "math")

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


class KernelUnavailable(RuntimeError):
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


def _flash_ok(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        q.is_cuda
        and bias is None
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and flash_attn_func() is not None
    )


def _math(q, k, v, bias, scale):
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _flash(q, k, v, scale):
    # flash_attn takes (B, N, heads, D)
    out = flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    return out.transpose(1, 2)


@functools.lru_cache(maxsize=256)
def _sdpa_choice(device_type: str, dtype: torch.dtype, q_shape, k_shape, v_shape, mask_shape) -> int:
    """Which SDPA kernel PyTorch will pick for this signature (cached: it depends on shapes only)."""
    dev = "cuda" if device_type == "cuda" else "cpu"
    def meta(shape):
        return torch.empty(shape, dtype=dtype, device=dev) if shape else None
    q, k, v = meta(q_shape), meta(k_shape), meta(v_shape)
    return int(torch._fused_sdp_choice(q, k, v, meta(mask_shape), 0.0, False, scale=1.0))


def _sdpa_context(q: torch.Tensor, bias: torch.Tensor | None):
    """On CUDA without a bias, allow only the FlashAttention and cuDNN kernels."""
    if q.is_cuda and bias is None and q.dtype in (torch.float16, torch.bfloat16):
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION])
    return contextlib.nullcontext()


def _sdpa(q, k, v, bias, scale):
    mask = None if bias is None else bias.to(q.dtype)
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(0)
    with _sdpa_context(q, bias):
        if q.is_cuda:
            # Shapes are small tensors on CUDA too; the choice is made under the same flags.
            choice = int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=scale))
        else:
            choice = _sdpa_choice("cpu", q.dtype, tuple(q.shape), tuple(k.shape), tuple(v.shape),
                                  None if mask is None else tuple(mask.shape))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out, _SDPA_NAMES.get(choice, f"sdpa:{choice}")


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scale: float,
    kernel: str = "auto",
) -> tuple[torch.Tensor, str]:
    """softmax(q k^T * scale + bias) v with the chosen kernel; returns (output, kernel that ran)."""
    if kernel == "auto":
        kernel = "flash" if _flash_ok(q, bias) else "sdpa"
    if kernel == "math":
        return _math(q, k, v, bias, scale), "math"
    if kernel == "sdpa":
        return _sdpa(q, k, v, bias, scale)
    if kernel == "flash":
        if not _flash_ok(q, bias):
            raise KernelUnavailable(
                "the flash_attn kernel needs the flash-attn package, a CUDA device, fp16/bf16, "
                "head dim a multiple of 8 (<=256) and no additive bias"
            )
        return _flash(q, k, v, scale), "flash_attn"
    check_kernel(kernel)
    raise AssertionError(f"kernel {kernel!r} is in KERNELS but not dispatched")
