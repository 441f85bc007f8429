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
from ribsr_cli.engine import strategy_probe
from ribsr_cli.engine.attention import WindowAttention, plan_bias_budget
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
    # the same model at inference: auto takes what this machine measured faster, on the fused kernel
    configure_attention(model.eval(), strategy="auto")
    with torch.inference_mode():
        ran = _sdpa_ops_that_ran(lambda: model(x))
    probed = strategy_probe.cached_decisions()
    layers = [m for m in model.modules() if isinstance(m, WindowAttention)]
    want = ["bias" if probed[strategy_probe.shape_key(m.window_size, m.num_heads, m.head_dim, m.rank,
                                                      torch.float32)]["bias_faster"] else "concat" for m in layers]
    assert [m.last_strategy for m in layers] == want
    assert attention_report(model)["kernels"] == ["sdpa:flash"]
    assert "aten::_scaled_dot_product_attention_math" not in ran


def test_auto_strategy_follows_this_machines_probe_per_layer_shape_and_dtype(monkeypatch, tmp_path) -> None:
    """The probe times both strategies once per shape and dtype, stores the answer per machine, and `auto`
    follows it; a second model of the same shapes reads the answers instead of timing again."""
    monkeypatch.setenv("RIBSR_HOME", str(tmp_path))  # an empty cache: every shape is probed here
    strategy_probe.forget()
    timed: list[tuple[int, str, torch.dtype]] = []
    real = WindowAttention._time_core

    def counting(self, strategy, dtype):
        timed.append((self.window_size, strategy, dtype))
        return real(self, strategy, dtype)

    monkeypatch.setattr(WindowAttention, "_time_core", counting)
    model = build_model("ribsr-s-x2").eval()
    layers = [m for m in model.modules() if isinstance(m, WindowAttention)]
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for m in layers:
                stored = strategy_probe.cached_decisions()
                chosen = m.resolve_strategy(CPU, dtype)
                record = strategy_probe.cached_decisions()[
                    strategy_probe.shape_key(m.window_size, m.num_heads, m.head_dim, m.rank, dtype)]
                assert chosen == ("bias" if record["bias_ms"] < record["concat_ms"] else "concat")
                assert record["bias_faster"] == (chosen == "bias") and len(stored) <= len(strategy_probe.cached_decisions())
    shapes = {(ws, dtype) for ws, _, dtype in timed}
    assert shapes == {(ws, dt) for ws in (8, 16) for dt in (torch.float32, torch.bfloat16)}
    assert len(timed) == 4 * 2 * (1 + strategy_probe.PROBE_REPEATS)  # warm-up + repeats, both strategies
    # a fresh process (memory forgotten) and a fresh model: answers come from the cache file, nothing is timed
    strategy_probe.forget()
    timed.clear()
    again = build_model("ribsr-s-x2").eval()
    with torch.inference_mode():
        assert [m.resolve_strategy(CPU) for m in again.modules() if isinstance(m, WindowAttention)] == \
            [m.resolve_strategy(CPU) for m in layers]
    assert timed == []
    assert layers[0].resolve_strategy(torch.device("cuda"), torch.bfloat16) == "concat"


def test_auto_strategy_obeys_a_stored_answer_and_the_fallback_table(monkeypatch) -> None:
    """What the cache file says decides (edited here to both answers); with probing off, the Xeon table."""
    import json

    model = build_model("ribsr-s-x2").eval()
    layer = next(m for m in model.modules() if isinstance(m, WindowAttention))
    path = strategy_probe.cache_path()
    for bias_faster in (False, True):
        strategy_probe.forget()
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault(strategy_probe.machine_key(), {})[strategy_probe.shape_key(
            layer.window_size, layer.num_heads, layer.head_dim, layer.rank, torch.float32)] = {"bias_faster": bias_faster}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        with torch.inference_mode():
            assert layer.resolve_strategy(CPU) == ("bias" if bias_faster else "concat")
    strategy_probe.forget()
    monkeypatch.setenv(strategy_probe.DISABLE_ENV, "0")
    big = build_model("SST-light-x4").eval()
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            configure_attention(big, compute_dtype=None if dtype == torch.float32 else dtype)
            for m in (m for m in big.modules() if isinstance(m, WindowAttention)):
                fast = m.window_size <= strategy_probe.FALLBACK_BIAS_UP_TO[dtype]
                assert m.resolve_strategy(CPU, dtype) == ("bias" if fast and m.bias_fits_budget else "concat")
    strategy_probe.forget()


def test_cached_bias_budget_is_a_total_across_layers(monkeypatch) -> None:
    monkeypatch.setenv(strategy_probe.DISABLE_ENV, "0")  # the fp32 fallback table wants a bias everywhere:
    torch.manual_seed(0)                                    # only the budget decides here
    model = build_model("SST-light-x4").eval()
    budget = 40 * 2**20  # the ws 8/16 layers and two of the ten 12.6 MB ws-32 layers
    configure_attention(model, bias_budget_bytes=budget, compute_dtype=torch.bfloat16)
    biased_bf16 = [m.window_size for m in model.modules() if isinstance(m, WindowAttention) and m.bias_fits_budget]
    assert biased_bf16.count(32) == 6 and 64 not in biased_bf16  # bf16 biases count at half: six 6.3 MB ws-32 fit
    configure_attention(model, bias_budget_bytes=budget, compute_dtype=None)
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
