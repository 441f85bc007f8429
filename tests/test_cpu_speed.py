"""Issue 14: the CPU precision policy and the per-mode RIB strategy choice.

The kernel that ran is checked against PyTorch's profiler (an independent record of which SDPA
implementation executed), accuracy against the fp32 output of the shipped model on a real photo.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.profiler import profile

from conftest import REPO
from ribsr_cli.engine import attention_report, build_model, configure_attention, runtime
from ribsr_cli.engine.attention import BIAS_FASTER_UP_TO, WindowAttention, plan_bias_budget
from ribsr_cli.engine.runtime import pick_dtype
from ribsr_cli.engine.registry import resolve
from ribsr_cli.engine.runner import RunOptions, Upscaler
from ribsr_cli.training.trainer import training_autocast

CPU = torch.device("cpu")


def _photo(size: int) -> torch.Tensor:
    rgb = np.asarray(Image.open(REPO / "examples" / "astronaut.png").convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb[:size, :size]).permute(2, 0, 1)[None].contiguous()


def _sdpa_ops_that_ran(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert pick_dtype("auto", CPU) == expected
    assert runtime.auto_precision(CPU) == ("bf16" if native else "fp32")
    assert training_autocast(CPU).fast_dtype == torch.bfloat16 and training_autocast(CPU)._enabled == native
    assert not training_autocast(CPU, "fp32")._enabled
    assert pick_dtype("fp32", CPU) == torch.float32 and pick_dtype("bf16", CPU) == torch.bfloat16


def test_native_bf16_needs_the_instructions_not_only_mkldnn(monkeypatch) -> None:
    """Plain AVX512 CPUs pass mkldnn's bf16 check but emulate bf16: auto must stay fp32 there."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bw": True}, raising=False)
    assert not runtime.cpu_native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    assert runtime.cpu_native_bf16()


def test_auto_never_uses_a_bias_that_needs_a_gradient_and_reports_the_kernel_that_ran() -> None:
    torch.manual_seed(0)
    model = build_model("ribsr-s-x2").train()
    x = _photo(32)
    ran = _sdpa_ops_that_ran(lambda: model(x).mean().backward())
    report = attention_report(model)
    assert report["strategies"] == ["concat"]  # inference would take the bias for ws 8/16 (below)
    assert report["kernels"] == ["sdpa:flash"] and "aten::_scaled_dot_product_flash_attention_for_cpu" in ran
    assert "aten::_scaled_dot_product_attention_math" not in ran
    # forcing the bias in training: its gradient sends SDPA to the math path, and the report says so
    configure_attention(model, strategy="bias")
    ran = _sdpa_ops_that_ran(lambda: model(x).mean().backward())
    assert attention_report(model)["kernels"] == ["sdpa:math"] and "aten::_scaled_dot_product_attention_math" in ran
    # the same model at inference: auto takes the cached bias, on the fused kernel
    configure_attention(model.eval(), strategy="auto")
    with torch.inference_mode():
        ran = _sdpa_ops_that_ran(lambda: model(x))
    assert attention_report(model) == {"kernels": ["sdpa:flash"], "strategies": ["bias"]}
    assert "aten::_scaled_dot_product_attention_math" not in ran


def test_auto_strategy_follows_the_measured_table_per_window_and_dtype() -> None:
    model = build_model("SST-light-x4").eval()
    layers = [m for m in model.modules() if isinstance(m, WindowAttention)]
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for m in layers:
                want = "bias" if m.window_size <= BIAS_FASTER_UP_TO[dtype] and m.bias_fits_budget else "concat"
                assert m.resolve_strategy(CPU, dtype) == want
    assert {m.resolve_strategy(CPU, torch.bfloat16) for m in layers if m.window_size >= 32} == {"concat"}
    assert layers[0].resolve_strategy(torch.device("cuda"), torch.bfloat16) == "concat"


def test_cached_bias_budget_is_a_total_across_layers() -> None:
    torch.manual_seed(0)
    model = build_model("SST-light-x4").eval()
    budget = 40 * 2**20  # the ws 8/16 layers and two of the ten 12.6 MB ws-32 layers
    configure_attention(model, bias_budget_bytes=budget)
    with torch.inference_mode():
        model(_photo(64))
    cached = sum(t.numel() * t.element_size() for m in model.modules() if isinstance(m, WindowAttention)
                 for kind, (_, t) in ((k[0], v) for k, v in m._cache.items()) if kind == "bias")
    layers = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert 0 < cached <= budget
    biased = [m.window_size for m in layers if m.last_strategy == "bias"]
    assert sorted(biased)[:10] == [8] * 5 + [16] * 5 and biased.count(32) == 2 and 64 not in biased
    plan_bias_budget(model, 0)  # nothing fits: every layer concatenates
    assert {m.resolve_strategy(CPU) for m in layers} == {"concat"}


def test_bf16_output_of_the_shipped_model_stays_within_50_db_of_fp32() -> None:
    x = _photo(96)
    outs = {}
    for precision in ("fp32", "bf16"):
        upscaler = Upscaler(resolve("ribsr-s-x2", 2, None, device="cpu"), RunOptions(device="cpu", precision=precision))
        model, autocast = upscaler.network, upscaler.context
        with torch.inference_mode(), autocast:
            outs[precision] = model(x).float().clamp(0, 1)
    mse = ((outs["bf16"] - outs["fp32"]) ** 2).mean().item()
    assert 10 * math.log10(1 / mse) >= 50
    assert not torch.equal(outs["bf16"], outs["fp32"])  # bf16 really ran
