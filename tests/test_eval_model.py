"""`ribsr eval` with a real network through the engine (no stand-ins)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ribsr_cli.cli import app
from ribsr_cli.engine import build_model
from ribsr_cli.engine.checkpoint import save_model
from ribsr_cli.engine.runner import RunOptions, load_upscaler
from ribsr_cli.engine.tiling import OutOfMemory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-x2.safetensors"
    save_model(build_model("ribsr-s-x2"), path)
    return path


def test_eval_runs_a_checkpoint(benchmarks_dir: Path, tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", str(benchmarks_dir / "Set5"), "-s", "2", "-m", str(checkpoint),
                                      "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    methods = {r["method"]: r for r in doc["results"]}
    assert set(methods) == {"bicubic", "tiny-x2"}
    model = methods["tiny-x2"]
    assert model["images"] == 5 and len(model["per_image"]) == 5
    assert model["psnr_y"] < methods["bicubic"]["psnr_y"]  # untrained
    # the reported score equals the network run by hand on the official LR, scored independently
    from PIL import Image

    from ribsr_cli.engine.checkpoint import load_model
    from ribsr_cli.imaging.metrics import psnr

    net = load_model(checkpoint)
    lr = np.asarray(Image.open(benchmarks_dir / "Set5/LR_bicubic/X2/babyx2.png").convert("RGB"))
    hr = np.asarray(Image.open(benchmarks_dir / "Set5/HR/baby.png").convert("RGB"))
    hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
    with torch.no_grad():
        sr = net(torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255)[0]
    sr = np.rint(sr.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    baby = next(p for p in model["per_image"] if p["name"] == "baby")
    assert baby["psnr_y"] == pytest.approx(psnr(sr, hr, crop_border=2), abs=1e-3)
    assert doc["protocol"]["tiled_fallbacks"].startswith("none")
    kernels = doc["protocol"]["attention_kernels"]  # what ran, as the attention layers recorded it
    assert kernels and all(k == "math" or k.startswith("sdpa:") for k in kernels)


def test_eval_rejects_wrong_scale_checkpoint(benchmarks_dir: Path, checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(benchmarks_dir / "Set5"), "-s", "3", "-m", str(checkpoint)])
    assert result.exit_code == 2
    assert "x2" in result.output and "x3" in result.output and "Traceback" not in result.output


def test_eval_upscaler_falls_back_to_tiles_on_out_of_memory(checkpoint: Path, monkeypatch) -> None:
    import ribsr_cli.engine.runner as runner

    real = runner.upscale_image
    calls: list[int] = []

    def flaky(model, image, scale, *, tile=0, **kw):
        calls.append(tile)
        if not tile:
            raise OutOfMemory("simulated")
        return real(model, image, scale, tile=tile, **kw)

    monkeypatch.setattr(runner, "upscale_image", flaky)
    fn = load_upscaler(str(checkpoint), 2, RunOptions(device="cpu").for_scoring())
    lr = (np.random.default_rng(0).random((80, 72, 3)) * 255).astype(np.uint8)
    sr = fn(lr, 2)
    assert sr.shape == (160, 144, 3) and sr.dtype == np.uint8
    assert calls == [0, 40]  # whole, then half the longer side
    assert fn.report.fallbacks and "tiled" in fn.report.fallbacks[0]
