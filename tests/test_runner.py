"""The one model runner (`engine/runner.py`): what `ribsr eval` reports is the network's own output scored by
the published protocol, and the Upscaler's own promises: the out-of-memory retry, grey in / grey out, the
tile it picks, and the report of what ran.

The score check recomputes everything outside ribsr's runner and metrics: the shipped default x2 network
read from its weights file, one whole-image forward on Set5's official LR, the BT.601 studio-range Y written
out here, the scale-pixel border cropped here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import coffee
from ribsr_cli.catalog import default_model
from ribsr_cli.cli import app
from ribsr_cli.engine import runner
from ribsr_cli.engine.checkpoint import load_model
from ribsr_cli.engine.runner import MIN_TILE, LoadedModel, RunOptions, Upscaler
from ribsr_cli.engine.tiling import OutOfMemory

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(w: int = 96, h: int = 80) -> np.ndarray:
    """conftest's crop of a real photo (cup rim on a table), as a uint8 HxWx3 array."""
    return np.asarray(coffee(w, h))


def upscaler_for(model_path: Path, **options) -> Upscaler:
    return Upscaler(LoadedModel.of(load_model(model_path), "rand-s-x2"), RunOptions(device="cpu", **options))


# ---- eval's score is the network's output, scored independently --------------------------------------


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2ycbcr luma on 0..255 samples, unrounded: 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    a, b = y_channel(sr)[border:-border, border:-border], y_channel(hr)[border:-border, border:-border]
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def test_eval_psnr_of_the_default_model_equals_an_independent_computation(benchmarks_dir: Path,
                                                                           tmp_path: Path) -> None:
    entry = default_model(2)
    if entry is None:
        pytest.skip("no shipped default x2 model")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(benchmarks_dir / "Set5"), "-s", "2", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    row = next(r for r in doc["results"] if r["method"] == entry.name)
    assert doc["protocol"]["precision"] == "fp32" and doc["protocol"]["models"] == [
        {"name": entry.name, "scale": 2, "sha256": entry.sha256, "source": "shipped"}]

    net = load_model(entry.path)  # the weights file itself: no registry, no runner
    expected = {}
    for hr_file in sorted((benchmarks_dir / "Set5" / "HR").glob("*.png")):
        hr = np.asarray(Image.open(hr_file).convert("RGB"))
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        lr_file = benchmarks_dir / "Set5" / "LR_bicubic" / "X2" / f"{hr_file.stem}x2.png"
        lr = np.asarray(Image.open(lr_file).convert("RGB"))
        with torch.no_grad():
            sr = net(torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255)[0]
        sr = np.rint(sr.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert sr.shape == hr.shape
        expected[hr_file.stem] = psnr_y(sr, hr, border=2)
    reported = {p["name"]: p["psnr_y"] for p in row["per_image"]}
    assert reported.keys() == expected.keys() and len(expected) == 5
    # The runner stores feature maps channels-last on a CPU (runtime.pick_memory_format): oneDNN then sums
    # each convolution in another order, ~1e-7 apart, which moves a handful of pixels across an 8-bit rounding
    # boundary: 1e-5 dB on Set5's baby. Anything the runner added or lost would be far above 1e-4 dB.
    for name, value in expected.items():
        assert reported[name] == pytest.approx(value, abs=1e-4), name
    assert row["psnr_y"] == pytest.approx(np.mean(list(expected.values())), abs=1e-4)


def test_upscale_output_of_the_default_model_equals_an_independent_forward(tmp_path: Path) -> None:
    """`ribsr upscale` with the shipped default x2 model, fp32 and the whole image, writes exactly the
    network's own output rounded to 8 bits (but for one-level rounding flips from the channels-last layout):
    the runner adds nothing and loses nothing on the way."""
    entry = default_model(2)
    if entry is None:
        pytest.skip("no shipped default x2 model")
    lr = photo(120, 88)
    Image.fromarray(lr).save(tmp_path / "cup.png")
    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "cup.png"), "-o", str(tmp_path / "out"), "-q",
                                      "--precision", "fp32", "--tile", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "out" / "cup_x2.png"))

    net = load_model(entry.path)  # the weights file itself: no registry, no runner, no tiler
    with torch.no_grad():
        sr = net(torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255)[0]
    expected = np.rint(sr.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert written.shape == expected.shape == (176, 240, 3)
    # equal but for pixels a channels-last convolution's summation order puts across a rounding boundary
    differ = written.astype(int) != expected
    assert np.abs(written.astype(int) - expected).max() <= 1 and differ.mean() < 1e-3


# ---- the Upscaler --------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_tile_once_and_notes_it(model_path: Path, monkeypatch) -> None:
    upscaler = upscaler_for(model_path, precision="fp32", tile=64, overlap=8)
    image = photo()
    real, calls = runner.upscale_image, []

    def out_of_memory_once(net, img, scale, *, tile, **kwargs):
        calls.append(tile)
        if len(calls) == 1:
            raise OutOfMemory("simulated")
        return real(net, img, scale, tile=tile, **kwargs)

    monkeypatch.setattr(runner, "upscale_image", out_of_memory_once)
    out, used = upscaler.run(image, np.uint8)
    assert calls == [64, 32] and used == 32
    assert upscaler.report.fallbacks == ["96x80 image tiled at 32 px (out of memory at 64 px)"]
    np.testing.assert_array_equal(out, real(upscaler.network, image, 2, tile=32, overlap=8))


def test_out_of_memory_from_whole_halves_the_longer_side_and_stops_at_the_minimum(model_path: Path,
                                                                                  monkeypatch) -> None:
    upscaler = upscaler_for(model_path, tile=0)
    calls = []

    def always_out_of_memory(net, img, scale, *, tile, **kwargs):
        calls.append(tile)
        raise OutOfMemory("simulated")

    monkeypatch.setattr(runner, "upscale_image", always_out_of_memory)
    with pytest.raises(OutOfMemory):
        upscaler.run(photo(96, 80))
    assert calls == [0, 48] and 48 // 2 < MIN_TILE  # whole, half of 96; 24 is below the floor, so it gives up
    assert upscaler.report.fallbacks == ["96x80 image tiled at 48 px (out of memory whole)"]


def test_grey_in_grey_out_and_the_scale_is_checked(model_path: Path) -> None:
    upscaler = Upscaler(LoadedModel.of(load_model(model_path)), RunOptions(device="cpu").for_scoring())
    grey = np.asarray(Image.fromarray(photo()).convert("L"))
    sr = upscaler(grey, 2)
    assert sr.shape == (160, 192) and sr.dtype == np.uint8
    colour = upscaler(np.repeat(grey[..., None], 3, axis=2), 2)  # the network sees grey as three equal channels
    assert colour.shape == (160, 192, 3) and not np.array_equal(colour[..., 0], colour[..., 1])  # it drifts them
    np.testing.assert_array_equal(sr, np.rint(colour.mean(axis=2, dtype=np.float32)).astype(np.uint8))
    with pytest.raises(ValueError, match="upscales x2, but x3 was asked"):
        upscaler(grey, 3)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_the_report_names_the_kernel_and_precision_that_ran(model_path: Path, attention: str) -> None:
    upscaler = upscaler_for(model_path, precision="fp32", attention=attention, tile=48, overlap=8)
    assert upscaler.report.kernels == [] and upscaler.report.precision == "fp32"
    upscaler.run(photo())
    ran = upscaler.report.kernels
    assert ran == upscaler.last_kernels()
    if attention == "math":
        assert ran == ["math"]
    else:  # PyTorch picks the SDPA backend; the report names the one it picked
        assert ran and all(k.startswith("sdpa:") for k in ran)
    half = upscaler_for(model_path, precision="bf16", tile=0)
    assert half.report.precision == "bf16" and isinstance(half.context, torch.autocast)
    out, _ = half.run(photo(48, 40))
    full, _ = upscaler_for(model_path, precision="fp32", tile=0).run(photo(48, 40))
    assert 0 < np.abs(out.astype(int) - full.astype(int)).mean() < 2  # bf16 really ran, and is close


def test_auto_tile_is_whole_when_it_fits_else_window_aligned(model_path: Path, monkeypatch) -> None:
    upscaler = upscaler_for(model_path)  # ribsr-s: dim 32, exp_ratio 2, windows 8 and 16
    bytes_per_px = 4 * 32 * (16 + 4 * 2) * 2  # the CPU's activation estimate per LR pixel
    monkeypatch.setattr(runner, "free_memory_bytes", lambda device: 4 * bytes_per_px * 100 * 100)  # a 100 px side
    assert upscaler.choose_tile(100, 100) == 0
    assert upscaler.choose_tile(200, 200) == 96  # 100 rounded down to the 16 px window
    assert upscaler_for(model_path, tile=64).choose_tile(2000, 2000) == 64  # asked for: taken as it is


@pytest.mark.parametrize("precision, item", [("fp32", 4), ("bf16", 2)])
def test_cpu_auto_tile_keeps_the_widest_feature_map_under_the_mmap_ceiling(model_path: Path, precision: str,
                                                                              item: int, monkeypatch) -> None:
    """With memory to spare, the CPU tile is the largest window-aligned side whose widest map (dim x
    exp_ratio channels, in the dtype that runs) is served from reused heap rather than a fresh mmap."""
    from ribsr_cli.engine.allocator import MMAP_THRESHOLD

    monkeypatch.setattr(runner, "free_memory_bytes", lambda device: 64 * 2**30)  # memory is not the limit
    upscaler = upscaler_for(model_path, precision=precision)  # ribsr-s: dim 32, exp_ratio 2, windows 8 and 16
    tile = upscaler.choose_tile(3000, 4000)
    widest = 32 * 2 * item
    assert tile % 16 == 0 and tile * tile * widest <= MMAP_THRESHOLD < (tile + 16) ** 2 * widest
    assert upscaler.choose_tile(tile - 16, tile) == 0  # an image under the cap runs whole
    assert upscaler.choose_tile(tile + 16, tile + 16) == tile


def test_run_options_for_scoring_and_their_checks() -> None:
    assert RunOptions().for_scoring() == RunOptions(precision="fp32", tile=0)
    asked = RunOptions(precision="bf16", tile=64)
    assert asked.for_scoring() == asked  # what is asked is what is scored
    assert RunOptions(device="cpu", precision="fp32").resolve() == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="unknown precision"):
        RunOptions(precision="fp8").resolve()
    with pytest.raises(ValueError, match="unknown attention kernel"):
        RunOptions(attention="magic").resolve()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        RunOptions(device="cpu", attention="flash", precision="bf16").resolve()


def test_flash_requirements_are_stated_once_for_auto_and_for_the_flag(monkeypatch) -> None:
    """`--attention flash`'s refusals and the `auto` rule read one function, so they cannot disagree."""
    from ribsr_cli.engine import kernels
    from ribsr_cli.engine.runner import check_attention
    from ribsr_cli.errors import UsageError

    monkeypatch.setattr(kernels, "flash_attn_func", lambda: None)
    assert "flash-attn package" in kernels.flash_refusal("cuda", torch.bfloat16)
    with pytest.raises(UsageError, match="flash-attn package"):
        check_attention("flash", torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(kernels, "flash_attn_func", lambda: (lambda *a, **k: None))  # as if installed
    assert kernels.flash_refusal("cuda", torch.bfloat16) is None
    check_attention("flash", torch.device("cuda"), torch.float16)  # accepted
    with pytest.raises(UsageError, match="bf16 or fp16"):
        check_attention("flash", torch.device("cuda"), torch.float32)
    assert "CUDA device" in kernels.flash_refusal("cpu", torch.bfloat16)
    q = torch.zeros(1, 2, 4, 16, dtype=torch.bfloat16)
    assert not kernels._flash_ok(q, None)  # a CPU tensor never goes to flash-attn, installed or not
