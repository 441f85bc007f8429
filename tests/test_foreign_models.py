"""Foreign checkpoints through spandrel (the `models` extra), and ribsr's SST as a spandrel architecture.

Small randomly initialised networks of several spandrel families are saved as users have them (`.pth` with
`params_ema`, or `.safetensors`); ribsr's output is compared with spandrel's own loader and call run on the
same pixels (the independent reference). Without spandrel installed, everything that needs it skips, and
what ribsr says to a foreign checkpoint then (a line naming the extra) is still checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURES
from ribsr_cli.cli import app
from ribsr_cli.engine.spandrel_import import spandrel_available
from ribsr_cli.errors import CheckpointError
from ribsr_cli.imaging.io import read_image

REPO = Path(__file__).resolve().parents[1]
COFFEE = REPO / "examples" / "coffee.png"
HAS_SPANDREL = spandrel_available()
needs_spandrel = pytest.mark.skipif(not HAS_SPANDREL, reason='spandrel not installed (pip install "ribsr[models]")')


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def photo(tmp_path: Path, w: int = 48, h: int = 40, name: str = "coffee.png") -> Path:
    """A crop of a real photo (odd sizes on purpose: no model's multiple)."""
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    with Image.open(COFFEE) as im:
        im.convert("RGB").crop((120, 90, 120 + w, 90 + h)).save(folder / name)
    return folder / name


def build(family: str) -> torch.nn.Module:
    """A tiny randomly initialised network of a spandrel family (seeded: the same weights every run)."""
    from ribsr_cli.engine.spandrel_import import import_spandrel

    import_spandrel()
    torch.manual_seed(0)
    if family == "esrgan":
        from spandrel.architectures.ESRGAN import ESRGAN
        return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    if family == "compact":
        from spandrel.architectures.Compact import Compact
        return Compact(num_feat=8, num_conv=2, upscale=2)
    if family == "swinir":
        from spandrel.architectures.SwinIR import SwinIR
        return SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2, upscale=2,
                      upsampler="pixelshuffledirect")
    if family == "span":
        from spandrel.architectures.SPAN import SPAN
        return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2)
    if family == "safmn":  # spandrel: size multiple of 8
        from spandrel.architectures.SAFMN import SAFMN
        return SAFMN(dim=8, n_blocks=1, upscaling_factor=2)
    if family == "compact_x1":  # a restoration-only (scale 1) model
        from spandrel.architectures.Compact import Compact
        return Compact(num_feat=8, num_conv=2, upscale=1)
    raise ValueError(family)


def save(net: torch.nn.Module, path: Path) -> Path:
    """As users have them: `.pth` wrapped in params_ema (BasicSR's training output), or bare safetensors."""
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"params_ema": state, "params": state}, path)
    return path


def spandrel_reference(path: Path, image: np.ndarray) -> np.ndarray:
    """spandrel's own loader and call on the same pixels, rounded as ribsr rounds (the independent reference)."""
    import spandrel

    model = spandrel.ModelLoader().load_from_file(str(path)).eval()
    top = 65535.0 if image.dtype == np.uint16 else 255.0
    x = torch.from_numpy(image.astype(np.float32) / top).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = model(x)[0].permute(1, 2, 0).numpy()
    return np.rint(np.clip(y, 0, 1) * top)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


SCALES = {"esrgan": 4, "compact": 2, "swinir": 2, "span": 2, "safmn": 2}


@needs_spandrel
@pytest.mark.parametrize("family,suffix", [("esrgan", ".pth"), ("esrgan", ".safetensors"), ("compact", ".pth"),
                                           ("compact", ".safetensors"), ("swinir", ".pth"), ("span", ".safetensors")])
def test_upscale_equals_spandrel_run_directly(tmp_path: Path, family: str, suffix: str) -> None:
    ckpt = save(build(family), tmp_path / f"{family}{suffix}")
    src = photo(tmp_path)
    report = tmp_path / "run.json"
    result = invoke("upscale", src, "-o", tmp_path / "out", "-m", ckpt, "-s", SCALES[family], "--tile", 0,
                    "--json", report)
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "out" / f"coffee_x{SCALES[family]}.png").pixels
    expected = spandrel_reference(ckpt, np.asarray(Image.open(src)))
    assert out.shape == expected.shape
    assert np.abs(out.astype(np.int32) - expected).max() <= 1  # the same computation, to 8-bit rounding
    run = json.loads(report.read_text())
    arch = {"esrgan": "ESRGAN", "compact": "RealESRGAN Compact", "swinir": "SwinIR", "span": "SPAN"}[family]
    assert run["precision"] == "fp32" and run["files"][0]["kernels"] == [f"{arch} fp32 (spandrel)"]


@needs_spandrel
def test_16_bit_alpha_icc_and_exif_are_kept(tmp_path: Path) -> None:
    ckpt = save(build("compact"), tmp_path / "compact.pth")
    folder = tmp_path / "in"
    folder.mkdir()
    rgb8 = np.asarray(Image.open(COFFEE).convert("RGB"))[90:130, 120:168]
    rgb16 = rgb8.astype(np.uint16) * 257 + np.arange(rgb8.size, dtype=np.uint16).reshape(rgb8.shape) % 200
    alpha16 = np.tile(np.linspace(300, 65535, rgb8.shape[1]).astype(np.uint16), (rgb8.shape[0], 1))  # none hidden
    with Image.open(REPO / "examples" / "rocket.jpg") as im:
        icc = im.info.get("icc_profile")
    from ribsr_cli.imaging.io import write_image

    write_image(folder / "deep.png", rgb16, alpha16, fmt="png", bit_depth=16, quality=95, icc_profile=icc)
    exif = Image.Exif()
    exif[0x010F] = "RibsrTestCam"
    Image.fromarray(rgb8).save(folder / "shot.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)

    result = invoke("upscale", folder, "-o", tmp_path / "out", "-m", ckpt, "-s", 2, "--tile", 0)
    assert result.exit_code == 0, result.output
    deep = read_image(tmp_path / "out" / "deep_x2.png")
    assert deep.bit_depth == 16 and deep.pixels.dtype == np.uint16 and deep.icc_profile == icc
    assert deep.alpha is not None and deep.alpha.shape == (80, 96) and deep.alpha.dtype == np.uint16
    expected = spandrel_reference(ckpt, rgb16)
    assert np.abs(deep.pixels.astype(np.int64) - expected).max() <= 1  # to 16-bit rounding
    with Image.open(tmp_path / "out" / "shot_x2.jpg") as im:
        assert im.size == (96, 80) and im.info.get("icc_profile") == icc
        assert im.getexif().get(0x010F) == "RibsrTestCam"


@needs_spandrel
@pytest.mark.parametrize("family", ["esrgan", "span"])
def test_tiled_matches_untiled(tmp_path: Path, family: str) -> None:
    ckpt = save(build(family), tmp_path / f"{family}.pth")
    src = photo(tmp_path, 96, 72)
    s = SCALES[family]
    for tile, out in ((0, "whole"), (48, "tiled")):  # 2 x 3 tiles with the default overlap (32, capped at 24)
        result = invoke("upscale", src, "-o", tmp_path / out, "-m", ckpt, "-s", s, "--tile", tile)
        assert result.exit_code == 0, result.output
    whole = read_image(tmp_path / "whole" / f"coffee_x{s}.png").pixels
    tiled = read_image(tmp_path / "tiled" / f"coffee_x{s}.png").pixels
    assert psnr(whole, tiled) >= 45


@needs_spandrel
def test_size_requirement_model_is_padded(tmp_path: Path) -> None:
    ckpt = save(build("safmn"), tmp_path / "safmn.pth")
    from ribsr_cli.engine.registry import load_checkpoint
    from ribsr_cli.engine.tiling import upscale_image

    model = load_checkpoint(ckpt)
    assert model.multiple_of == 8 and 8 in model.window_sizes  # tiles start on the model's grid
    src = photo(tmp_path, 37, 29)
    seen: list[tuple[int, ...]] = []
    model.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    upscale_image(model, np.asarray(Image.open(src)), 2, tile=0)
    assert seen == [(1, 3, 32, 40)]  # 29 x 37 padded up to multiples of 8 before the network sees it
    for tile, out in ((0, "whole"), (32, "tiled")):
        result = invoke("upscale", src, "-o", tmp_path / out, "-m", ckpt, "-s", 2, "--tile", tile)
        assert result.exit_code == 0, result.output
    whole = read_image(tmp_path / "whole" / "coffee_x2.png").pixels
    assert whole.shape == (58, 74, 3)
    assert np.abs(whole.astype(np.int32) - spandrel_reference(ckpt, np.asarray(Image.open(src)))).max() <= 1
    assert read_image(tmp_path / "tiled" / "coffee_x2.png").pixels.shape == (58, 74, 3)


@needs_spandrel
def test_half_precision_unsupported_falls_back_to_fp32_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    from ribsr_cli.engine import foreign

    real_load = foreign.load_foreign

    def fp32_only(*args, **kwargs):  # as spandrel describes AuraSR: neither fp16 nor bf16
        model = real_load(*args, **kwargs)
        model.descriptor.supports_bfloat16 = model.descriptor.supports_half = False
        return model

    monkeypatch.setattr(foreign, "load_foreign", fp32_only)
    ckpt = save(build("compact"), tmp_path / "compact.pth")
    src = photo(tmp_path)
    report = tmp_path / "run.json"
    result = invoke("upscale", src, "-o", tmp_path / "out", "-m", ckpt, "-s", 2, "--tile", 0, "--precision", "bf16",
                    "--json", report)
    assert result.exit_code == 0, result.output
    assert "does not support bf16" in result.output and "running in fp32" in result.output
    run = json.loads(report.read_text())
    assert run["precision"] == "fp32" and run["files"][0]["kernels"] == ["RealESRGAN Compact fp32 (spandrel)"]
    out = read_image(tmp_path / "out" / "coffee_x2.png").pixels
    assert np.abs(out.astype(np.int32) - spandrel_reference(ckpt, np.asarray(Image.open(src)))).max() <= 1


@needs_spandrel
def test_supported_bf16_runs_in_bf16(tmp_path: Path) -> None:
    from ribsr_cli.engine.registry import load_checkpoint
    from ribsr_cli.engine.runner import LoadedModel, RunOptions, Upscaler

    model = load_checkpoint(save(build("compact"), tmp_path / "compact.pth"))
    upscaler = Upscaler(LoadedModel.of(model), RunOptions(device="cpu", precision="bf16"))
    assert isinstance(upscaler.context, torch.autocast) and upscaler.report.precision == "bf16"
    assert model.run_precision == "bf16" and not model.notes and not upscaler.report.notes
    assert model.kernel_report()["kernels"] == ["RealESRGAN Compact bf16 (spandrel)"]


@needs_spandrel
def test_eval_and_store_accept_foreign_models(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RIBSR_HOME", str(tmp_path / "home"))
    ckpt = save(build("span"), tmp_path / "span.pth")
    data = tmp_path / "set"
    data.mkdir()
    for i, (x, y) in enumerate(((100, 80), (200, 150))):
        with Image.open(COFFEE) as im:
            im.convert("RGB").crop((x, y, x + 40, y + 32)).save(data / f"img{i}.png")
    report = tmp_path / "eval.json"
    result = invoke("eval", data, "-s", 2, "-m", ckpt, "--json", report, "-q")
    assert result.exit_code == 0, result.output
    assert "SPAN fp32 (spandrel)" in report.read_text()

    added = invoke("models", "add", ckpt, "--name", "tiny-span")
    assert added.exit_code == 0, added.output
    card = json.loads((tmp_path / "home" / "models" / "tiny-span.json").read_text())
    assert card["family"] == "spandrel" and card["arch_name"] == "SPAN" and card["scale"] == 2
    src = photo(tmp_path)
    for model, out in ((ckpt, "file"), ("tiny-span", "stored")):
        result = invoke("upscale", src, "-o", tmp_path / out, "-m", model, "-s", 2, "--tile", 0)
        assert result.exit_code == 0, result.output
    assert np.array_equal(read_image(tmp_path / "file" / "coffee_x2.png").pixels,
                          read_image(tmp_path / "stored" / "coffee_x2.png").pixels)


def _one_line_failure(tmp_path: Path, ckpt: Path) -> str:
    result = invoke("upscale", photo(tmp_path), "-o", tmp_path / "out", "-m", ckpt, "-s", 2)
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(ckpt) in lines[0]
    return lines[0]


@needs_spandrel
def test_unsupported_and_restoration_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    unknown = tmp_path / "classifier.pth"
    torch.save({"fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)}, unknown)
    assert "spandrel recognises no architecture" in _one_line_failure(tmp_path, unknown)
    restoration = save(build("compact_x1"), tmp_path / "denoise.pth")
    assert "restoration-only" in _one_line_failure(tmp_path, restoration)


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "evil.pth"
    torch.save({"params_ema": Payload()}, ckpt)  # torch.save pickles the object: loading it would run the command
    assert "weights_only" in _one_line_failure(tmp_path, ckpt)
    assert not marker.exists()


def test_without_spandrel_a_foreign_checkpoint_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "spandrel", None)  # as when the extra is not installed
    ckpt = tmp_path / "esrgan_like.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.randn(8, 3, 3, 3)}}, ckpt)
    line = _one_line_failure(tmp_path, ckpt)
    assert 'ribsr[models]' in line and "spandrel" in line
    from ribsr_cli.engine.registry import load_checkpoint

    with pytest.raises(CheckpointError, match=r"ribsr\[models\]"):
        load_checkpoint(ckpt)


GUARD_PROBE = """
import sys, types
{setup}
from ribsr_cli.engine.spandrel_import import import_spandrel
spandrel = import_spandrel()
lama = sys.modules["spandrel.architectures.LaMa.__arch.LaMa"]
try:
    lama.rotate(None, 0)
    print("rotate:ran")
except Exception as exc:
    print("rotate:" + type(exc).__name__)
print("torchvision-left:" + str(sys.modules.get("torchvision")))
"""


def _probe(setup: str) -> str:
    result = subprocess.run([sys.executable, "-c", GUARD_PROBE.format(setup=setup)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_spandrel
def test_spandrel_loads_without_torchvision_and_says_why_lama_cannot_run() -> None:
    out = _probe('sys.modules["torchvision"] = None  # not installed')
    assert "rotate:TorchvisionUnavailable" in out  # LaMa would need it: a clear error, not a wrong result
    assert "torchvision-left:None" in out  # the stand-in is gone once spandrel is imported


@needs_spandrel
def test_a_working_torchvision_is_used_as_it_is() -> None:
    fake = ("tv = types.ModuleType('torchvision'); tv.__path__ = []\n"
            "tr = types.ModuleType('torchvision.transforms'); tr.__path__ = []\n"
            "fn = types.ModuleType('torchvision.transforms.functional')\n"
            "fn.rotate = lambda *a, **k: 'real'; fn.normalize = lambda *a, **k: 'real'\n"
            "fn.InterpolationMode = type('InterpolationMode', (), {'BILINEAR': 2})\n"
            "tv.transforms, tr.functional = tr, fn\n"
            "sys.modules.update({'torchvision': tv, 'torchvision.transforms': tr, 'torchvision.transforms.functional': fn})")
    out = _probe(fake)
    assert "rotate:ran" in out and "torchvision-left:<module 'torchvision'" in out


FIXTURE_FILES = sorted(FIXTURES.glob("*.pt")) if FIXTURES.is_dir() else []


@needs_spandrel
@pytest.mark.skipif(not FIXTURE_FILES, reason="reference fixtures not available")
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_spandrel_sst_entry_reproduces_reference_fixtures(path: Path) -> None:
    import spandrel

    from ribsr_cli.engine.spandrel_sst import register_sst

    ref = torch.load(path, weights_only=True)
    registry = register_sst(spandrel.MAIN_REGISTRY.copy(), arch=ref["config"])  # RIB stores no window sizes
    with pytest.raises(spandrel.UnsupportedModelError):  # spandrel alone has no SST
        spandrel.ModelLoader().load_from_state_dict(ref["state_dict"])
    checkpoint = {"params": ref["state_dict"], "params_ema": ref["state_dict"]}  # as the authors' code saves them
    descriptor = spandrel.ModelLoader(registry=registry).load_from_state_dict(checkpoint)
    assert descriptor.architecture.id == "SST" and descriptor.scale == ref["config"]["upscaling_factor"]
    with torch.no_grad():
        raw = descriptor.model(ref["input"])
        called = descriptor(ref["input"])
    assert (raw - ref["output"]).abs().max().item() <= 1e-4
    assert (called - ref["output"].clamp(0, 1)).abs().max().item() <= 1e-4


@needs_spandrel
def test_spandrel_sst_entry_detects_a_preset_checkpoint(tmp_path: Path) -> None:
    import spandrel

    from ribsr_cli.engine import build_model
    from ribsr_cli.engine.spandrel_sst import register_sst

    torch.manual_seed(1)
    net = build_model("ribsr-s-x2")
    registry = register_sst(spandrel.MAIN_REGISTRY.copy())
    descriptor = spandrel.ModelLoader(registry=registry).load_from_state_dict(net.state_dict())
    assert descriptor.architecture.id == "SST" and "ribsr-s-x2" in descriptor.tags
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(descriptor.model(x), net.eval()(x))


@needs_spandrel
def test_spandrel_sst_entry_loads_a_damage_aware_model_with_its_estimator() -> None:
    """The shipped damage-aware ×2 (ribsr-sd: damage_proj and a built-in estimator) through the spandrel entry
    computes what ribsr's own load computes, estimator reading included, on a crop of a real photo."""
    import spandrel

    from ribsr_cli.engine.checkpoint import load_model
    from ribsr_cli.engine.spandrel_sst import register_sst

    weights = REPO / "weights" / "ribsr-s-real-x2.safetensors"
    own = load_model(weights).eval()
    assert own.config.damage_channels  # the file under test is the damage-aware kind
    registry = register_sst(spandrel.MAIN_REGISTRY.copy())
    descriptor = spandrel.ModelLoader(registry=registry).load_from_file(weights)
    assert descriptor.architecture.id == "SST" and descriptor.scale == 2
    photo = np.asarray(Image.open(REPO / "examples" / "coffee.png").convert("RGB"))[100:196, 200:296]
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert torch.equal(descriptor.model(x), own(x))
        told_clean = own(x, torch.zeros(1, own.config.damage_channels))
    assert (told_clean - own(x)).abs().max() > 1e-3  # the estimator's reading did reach the network
