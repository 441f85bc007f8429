"""CUDA paths made safe before a GPU is at hand (issue 19), exercised on the CPU.

Each test runs the very code a CUDA run takes, with the one GPU-only fact
made a parameter or forced: the window limit of the fused kernels lowered,
the head-dim padding switched on, "no fused kernel on this GPU" simulated,
the model put on another device ('meta', which like CUDA is not the CPU and
whose tensors `torch.set_rng_state` rejects just as it rejects CUDA ones).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import FIXTURES, REPO
from ribsr_cli import bench as bm
from ribsr_cli.engine import attention, build_model, kernels, runtime
from ribsr_cli.engine.attention import WindowAttention
from ribsr_cli.engine.runner import RunOptions, load_upscaler
from ribsr_cli.engine.runtime import TF32Off, pick_dtype
from ribsr_cli.imaging.metrics import psnr
from ribsr_cli.imaging.resize import bicubic_degrade
from ribsr_cli.training import checkpointing, trainer, validation

EXAMPLES = REPO / "examples"


def _photo(name: str, side: int, at: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A side x side uint8 RGB crop of one of the repository's example photos."""
    img = np.asarray(Image.open(EXAMPLES / name).convert("RGB"))
    y, x = at
    return np.ascontiguousarray(img[y:y + side, x:x + side])


def _feature_map(dim: int, side: int) -> torch.Tensor:
    """(1, dim, side, side): a real photo's pixels mixed into `dim` channels by a fixed 1x1 conv."""
    rgb = torch.from_numpy(_photo("astronaut.png", side, (100, 150))).permute(2, 0, 1)[None].float() / 255
    mix = torch.randn(dim, 3, 1, 1, generator=torch.Generator().manual_seed(5))
    return torch.nn.functional.conv2d(rgb - 0.5, mix)


def _layer(positional: str, dim: int, heads: int, ws: int = 8, strategy: str = "auto") -> WindowAttention:
    layer = bm.make_layer(bm.CoreShape(heads, dim // heads, 8, 16, 4), ws, positional, torch.device("cpu"), seed=3)
    layer.strict_kernel = False
    layer.strategy = strategy
    return layer.eval()


# ---- item 5: more windows than a CUDA grid axis takes ---------------------------------------------


@pytest.mark.parametrize("positional,strategy", [("RIB", "concat"), ("RIB", "bias"), ("RPB", "auto"),
                                                 ("NoPE", "auto")])
def test_a_call_over_the_window_limit_is_split_and_equals_one_call(positional, strategy, monkeypatch) -> None:
    layer = _layer(positional, 24, 2, strategy=strategy)
    x = _feature_map(24, 88)  # 11 x 11 = 121 windows
    with torch.no_grad():
        whole = layer(x)
    calls = []
    real = kernels._attend_once
    monkeypatch.setattr(kernels, "_attend_once", lambda q, *a: calls.append(q.shape[0]) or real(q, *a))
    monkeypatch.setattr(kernels, "MAX_WINDOWS_PER_CALL", 50)
    with torch.no_grad():
        split = layer(x)
    assert calls == [50, 50, 21]
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)


def test_split_keeps_a_per_window_bias_and_the_gradients(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(9, 2, 16, 8, generator=gen, requires_grad=True) for _ in range(3))
    bias = torch.randn(9, 2, 16, 16, generator=gen)  # a different bias for every window

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, _ = kernels.attend(q, k, v, bias, scale=0.35, kernel="math")
        grads = torch.autograd.grad((out * torch.arange(8.0)).sum(), (q, k, v))
        return out.detach(), list(grads)

    whole, whole_grads = run()
    monkeypatch.setattr(kernels, "MAX_WINDOWS_PER_CALL", 4)
    split, split_grads = run()
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)
    for a, b in zip(split_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---- item 8: head dim 30 padded for the fused kernels -----------------------------------------------


@pytest.mark.parametrize("positional,strategy", [("RPB", "auto"), ("NoPE", "auto"), ("RIB", "bias")])
def test_padded_head_dim_equals_unpadded(positional, strategy, monkeypatch) -> None:
    assert attention.head_dim_multiple(torch.device("cpu")) == 1  # the CPU kernels need no copy
    assert attention.head_dim_multiple(torch.device("cuda")) == 8
    layer = _layer(positional, 60, 2, strategy=strategy)  # head dim 30, as in SST base
    x = _feature_map(60, 40)
    widths = []
    real = kernels.attend
    monkeypatch.setattr(kernels, "attend", lambda q, *a, **kw: widths.append(q.shape[-1]) or real(q, *a, **kw))
    with torch.no_grad():
        plain = layer(x)
        monkeypatch.setattr(attention, "head_dim_multiple", lambda device: 8)  # what CUDA gets
        padded = layer(x)
    assert widths == [30, 32]
    torch.testing.assert_close(padded, plain, rtol=0, atol=2e-6)


# ---- item 4: no FlashAttention/cuDNN kernel (T4, V100) ---------------------------------------------


def test_sdpa_falls_back_and_says_so_when_no_fused_kernel_exists(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(6, 2, 64, 16, generator=gen) for _ in range(3))
    reference, _ = kernels.attend(q, k, v, scale=0.25, kernel="math")
    _, normal = kernels.attend(q, k, v, scale=0.25, kernel="sdpa")
    assert not normal.endswith(kernels.FALLBACK_NOTE)
    # what a T4 in bf16 looks like to the dispatcher: fused wanted, none available
    monkeypatch.setattr(kernels, "_wants_fused", lambda q, bias: True)
    monkeypatch.setattr(kernels, "_fused_choice", lambda q, k, v, scale: None)
    out, ran = kernels.attend(q, k, v, scale=0.25, kernel="sdpa")
    assert ran.startswith("sdpa:") and ran.endswith(kernels.FALLBACK_NOTE)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    with pytest.raises(kernels.KernelUnavailable, match="no FlashAttention or cuDNN"):
        kernels.attend(q, k, v, scale=0.25, kernel="sdpa", strict=True)  # the benchmark's rows


def test_auto_precision_is_bf16_only_from_sm80(monkeypatch) -> None:
    cuda = torch.device("cuda")
    for capability, expected in (((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                 ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert pick_dtype("auto", cuda) == expected, capability
    assert pick_dtype("bf16", cuda) == torch.bfloat16
    # on a CPU, auto follows native bf16 (issue 14): see tests/test_cpu_speed.py
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: False)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32


# ---- items 6 and 10: true fp32, and the precision recorded ---------------------------------------


def test_tf32_off_context_is_reusable_and_restores_the_flags() -> None:
    b = torch.backends
    before = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    try:
        b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True
        ctx = TF32Off()
        for _ in range(2):  # the tiling loop enters the same context once per tile batch
            with ctx:
                assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == (False, False)
                with ctx:
                    pass
                assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == (False, False)
            assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == (True, True)
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = before


def test_eval_upscaler_runs_fp32_unless_asked_and_records_it() -> None:
    lr = _photo("chelsea.png", 40, (120, 200))
    fp32 = load_upscaler(None, 2, RunOptions(device="cpu").for_scoring())
    bf16 = load_upscaler(None, 2, RunOptions(device="cpu", precision="bf16").for_scoring())
    a, b = fp32(lr, 2), bf16(lr, 2)
    assert fp32.report.precision == "fp32" and bf16.report.precision == "bf16"
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape == (80, 80, 3) and 0 < diff.mean() < 2  # bf16 really ran, and is close


# ---- item 9: naming the kernel that ran ------------------------------------------------------------


def test_profiler_tells_cudnn_from_flash_even_when_its_name_says_flash() -> None:
    cudnn = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0"
    flash = "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false>, true>(Params)"
    eff = "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<bf16>::Params)"
    other = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>"
    assert [bm.attention_kernel_family(n) for n in (cudnn, flash, eff, other)] == ["cudnn", "flash", "efficient",
                                                                                   None]
    assert bm.profile_note("sdpa:cudnn", [cudnn, other]) == ("profiler: cudnn kernel ran", [cudnn])
    note, _ = bm.profile_note("sdpa:flash", [cudnn, other])
    assert note == "profiler: cudnn kernel ran (row says sdpa:flash)"
    assert bm.profile_note("sdpa:efficient", [eff])[0] == "profiler: efficient kernel ran"
    assert bm.profile_note("math", [other])[0] == "profiler: no fused attention kernel ran"
    assert kernels._SDPA_NAMES[int(torch.nn.attention.SDPBackend.CUDNN_ATTENTION)] == "sdpa:cudnn"


# ---- items 2 and 3: validation and resume with the model on another device -----------------------


class _DeviceProbe(nn.Module):
    """Sits on `meta` like a model sits on CUDA; records where its inputs arrive, answers on the CPU."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device="meta"))
        self.scale, self.seen = scale, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.device.type)
        b, c, h, w = x.shape
        return torch.full((b, c, h * self.scale, w * self.scale), 0.5)


def _val_pairs(scale: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    crops = [("astronaut", _photo("astronaut.png", 48, (60, 200))), ("coffee", _photo("coffee.png", 48, (150, 250)))]
    return [(name, bicubic_degrade(hr, scale), hr) for name, hr in crops]


def test_validate_feeds_the_model_on_its_device_and_scores_on_the_cpu() -> None:
    pairs = _val_pairs(2)
    probe = _DeviceProbe(2)
    score = validation.validate(probe, pairs, 2)
    assert probe.seen == ["meta", "meta"]  # the input followed the model
    grey = np.full_like(pairs[0][2], 128)
    assert score == pytest.approx(np.mean([psnr(grey, hr, crop_border=2, test_y=True) for _, _, hr in pairs]),
                                  abs=0.05)  # 0.5 * 255 rounds to 128


def test_validate_equals_the_engine_scored_independently() -> None:
    from ribsr_cli.engine.registry import resolve
    from ribsr_cli.engine.tiling import upscale_image

    model = resolve(None, 2, None, device="cpu").network
    pairs = _val_pairs(2)
    expected = np.mean([psnr(upscale_image(model.eval(), lr, 2, device="cpu"), hr, crop_border=2, test_y=True)
                        for _, lr, hr in pairs])
    assert validation.validate(model, pairs, 2, "cpu") == pytest.approx(expected, abs=1e-6)


def test_resume_loads_on_the_cpu_and_restores_onto_a_model_elsewhere(tmp_path: Path, pool: Path) -> None:
    cfg = trainer.TrainConfig(out_dir=str(tmp_path), data_dir=str(pool), val_dir="", total_steps=4, warmup_steps=1,
                              ckpt_minutes=100, patch=16, batch=1)
    trainer.train(cfg, resume=False, log=lambda _: None, stop_at=2, device="cpu")
    ckpt = tmp_path / "last.pt"

    # the old load (map_location = the training device) puts the RNG state there, and restoring fails
    moved = torch.load(ckpt, map_location="meta", weights_only=True)
    with pytest.raises(TypeError, match="ByteTensor"):
        checkpointing.set_rng_state(np.random.default_rng(), moved["rng"])

    state = trainer.load_training_state(ckpt)
    tensors = [t for part in ("model", "ema") for t in state[part].values()] + [state["rng"]["torch"]]
    tensors += [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    model, ema = build_model("ribsr-s-x2").to("meta"), build_model("ribsr-s-x2").to("meta")
    opt = torch.optim.AdamW(model.parameters())
    rng = np.random.default_rng(123)
    torch.manual_seed(999)
    with pytest.warns(UserWarning):  # copying into meta parameters is a no-op: torch says so
        trainer.restore_training_state(state, model, ema, opt, rng)
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    saved = np.random.default_rng()
    saved.bit_generator.state = json.loads(state["rng"]["numpy"])
    assert rng.integers(1 << 62, size=4).tolist() == saved.integers(1 << 62, size=4).tolist()
    assert next(iter(opt.state.values()))["exp_avg"].device.type == "meta"  # moments follow the parameters

    resumed = trainer.train(cfg, resume=True, log=lambda _: None, device="cpu")  # the same code, end to end
    assert torch.load(resumed / "last.pt", weights_only=True)["step"] == 4


def test_ranks_split_the_global_batch_into_equal_ordered_slices() -> None:
    lr, hr = torch.rand(6, 3, 4, 4), torch.rand(6, 3, 8, 8)
    shares = [trainer.rank_share(lr, hr, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([s[0] for s in shares]), lr) and torch.equal(torch.cat([s[1] for s in shares]), hr)
    assert trainer.rank_share(lr, hr, 0, 1)[0] is lr  # a single process trains on the whole batch


# ---- items 1, 7, 11: the suite itself ---------------------------------------------------------------


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "results" / "suite.json"
    fixtures = FIXTURES if FIXTURES.is_dir() else None
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--cpu-smoke", "--out", str(out)]
    cmd += ["--fixtures", str(fixtures)] if fixtures else []
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    sections = doc["sections"]
    assert list(sections) == ["env", "parity", "attention", "network", "upscale", "attention_train"]
    assert doc["arguments"]["photos"] == str(REPO / "examples") and doc["arguments"]["cpu_smoke"] is True
    assert 0 < doc["elapsed_s"] < doc["budget_s"]
    assert sections["env"]["data"]["backends"]["cudnn.allow_tf32"] in (True, False)
    if fixtures is None:
        assert sections["parity"] == {**sections["parity"], "status": "skipped", "reason": "no --fixtures given"}
    else:
        results = sections["parity"]["data"]["results"]
        assert set(results) == {p.stem for p in fixtures.glob("*.pt")}
        for res in results.values():
            fp32 = res["modes"]["fp32"]
            assert fp32["max_abs_err_vs_fp32_reference"] <= 1e-4 and res["fp32_ok"] is True
            assert fp32["tf32"] == {"cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False}
            assert 0 < res["modes"]["bf16"]["max_abs_err_vs_fp32_reference"] < 0.05
    for name, train in (("attention", False), ("attention_train", True)):
        data = sections[name]["data"]
        assert sections[name]["status"] == "ok" and data["check"]["ok"] is True and not data["errors"]
        variants = {r["variant"] for r in data["rows"] if r["window"] == 8}
        assert {"rib", "rpb-dense", "rpb-sdpa", "nope"} <= variants
        assert all(r["train"] is train for r in data["rows"])
    net = sections["network"]["data"]["ribsr-s-x4"]
    assert {r["attn_type"] for r in net} >= {"RIB", "RPB"} and all(r["ms_median"] > 0 for r in net)
    up = sections["upscale"]["data"]
    assert up["returncode"] == 0 and up["photo"].startswith("synthetic from ") and up["report"]


def test_a_failed_rib_check_fails_the_section_and_the_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    code = _suite_module().main(["--cpu-smoke", "--sections", "attention", "--corrupt-rib", "--out", str(out),
                                 "--budget-s", "1e6"])  # inside pytest the process is already old
    doc = json.loads(out.read_text())
    assert code == 1
    section = doc["sections"]["attention"]
    assert section["status"] == "failed" and section["error"].startswith("RibMismatch")
    assert "rows" not in json.dumps(section)


def test_one_failing_window_keeps_the_others(tmp_path: Path, monkeypatch) -> None:
    gs = _suite_module()
    real = gs.bm.run_attention

    def flaky(opts, *args):
        if opts.windows == [16]:
            raise RuntimeError("CUDA error: invalid configuration argument")
        return real(opts, *args)

    monkeypatch.setattr(gs.bm, "run_attention", flaky)
    suite = gs.Suite(tmp_path / "s.json", budget_s=1e6)
    saved = []
    keep = suite.keep_partial
    monkeypatch.setattr(suite, "keep_partial", lambda name, data: saved.append(
        json.loads(json.dumps(data, default=str))) or keep(name, data))
    suite.section("attention", 0, lambda: gs.section_attention(suite, "attention", torch.device("cpu"), [8, 16, 8],
                                                                 False, False, 0, target_s=0.01))
    section = json.loads((tmp_path / "s.json").read_text())["sections"]["attention"]
    assert section["status"] == "partial"
    assert section["data"]["errors"] == {"16": "RuntimeError: CUDA error: invalid configuration argument"}
    assert {r["window"] for r in section["data"]["rows"]} == {8}
    assert [len(s["rows"]) for s in saved][0] > 0 and len(saved) == 3  # on disk after every window


def test_budget_counts_from_process_start_and_inputs_are_explicit(tmp_path: Path) -> None:
    gs = _suite_module()
    age = gs.process_age_s()
    assert age > 1  # pytest imported torch and collected before this line
    assert gs.Suite(tmp_path / "x.json", 420).elapsed() >= age - 0.5
    for argv in (["--cpu-smoke"], ["--cpu-smoke", "--out", str(tmp_path / "x.json"), "--fixtures", str(tmp_path / "no")],
                 ["--cpu-smoke", "--out", str(tmp_path / "x.json"), "--sections", "parity,nonsense"]):
        with pytest.raises(SystemExit) as exc:
            gs.main(argv)
        assert exc.value.code == 2
