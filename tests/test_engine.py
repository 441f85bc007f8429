"""The engine against the authors' reference outputs and against independent formulations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from ribsr_cli.engine import PRESETS, attention_report, build_model, configure_attention
from ribsr_cli.engine.attention import WindowAttention
from ribsr_cli.engine.checkpoint import CheckpointError, detect_arch, load_model, save_model
from ribsr_cli.engine.kernels import attend, available_kernels
from ribsr_cli.engine.rib import fourier_features, rpb_bias

FIXTURE_FILES = sorted(FIXTURES.glob("*.pt"))


def _fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.skipif(not FIXTURE_FILES, reason="reference fixtures not available")
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("strategy", ["concat", "bias"])
def test_reference_parity(path: Path, strategy: str) -> None:
    ref = _fixture(path)
    model = build_model(ref["config"])
    model.load_state_dict(ref["state_dict"], strict=True)
    configure_attention(model.eval(), kernel="sdpa", strategy=strategy)
    with torch.no_grad():
        out = model(ref["input"])
    assert out.shape == ref["output"].shape
    assert (out - ref["output"]).abs().max().item() <= 1e-4


@pytest.mark.skipif(not FIXTURE_FILES, reason="reference fixtures not available")
def test_reference_parity_math_kernel_and_cached_rerun() -> None:
    ref = _fixture(min(FIXTURE_FILES, key=lambda p: p.stat().st_size))
    model = build_model(ref["config"]).eval()
    model.load_state_dict(ref["state_dict"])
    configure_attention(model, kernel="math")
    with torch.no_grad():
        first = model(ref["input"])
        second = model(ref["input"])  # served from the per-layer positional cache
    assert attention_report(model)["kernels"] == ["math"]
    assert (first - ref["output"]).abs().max() <= 1e-4
    assert torch.equal(first, second)


def test_fourier_features_layout() -> None:
    feats = fourier_features(4, 2)
    assert feats.shape == (16, 2 + 4 * 2)
    # token 1 is row 0, column 1: u = 2 * 1.5 / 4 - 1 = -0.25, v = 2 * 0.5 / 4 - 1 = -0.75
    u, v = -0.25, -0.75
    expected = [u, v, math.sin(u), math.sin(v), math.cos(u), math.cos(v),
                math.sin(2 * u), math.sin(2 * v), math.cos(2 * u), math.cos(2 * v)]
    assert torch.allclose(feats[1], torch.tensor(expected), atol=1e-6)


def test_rpb_bias_matches_loop() -> None:
    ws, heads = 3, 2
    table = torch.randn(heads, (2 * ws - 1) ** 2)
    bias = rpb_bias(table, ws)
    for q in range(ws * ws):
        for k in range(ws * ws):
            qy, qx, ky, kx = q // ws, q % ws, k // ws, k % ws
            idx = (ky - qy + ws - 1) * (2 * ws - 1) + (kx - qx + ws - 1)
            assert torch.equal(bias[:, q, k], table[:, idx])


def _layer(positional: str = "RIB", ws: int = 8, dim: int = 24, heads: int = 3, rank: int = 6) -> WindowAttention:
    torch.manual_seed(0)
    layer = WindowAttention(dim, heads, ws, rank, positional=positional).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


def test_concatenated_rib_equals_explicit_bias() -> None:
    layer = _layer()
    q, k, v = (torch.randn(5, 3, 64, 8) for _ in range(3))
    bias = layer.positional_bias()
    scores = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
    expected = scores.softmax(-1) @ v
    for strategy in ("concat", "bias"):
        for kernel in ("math", "sdpa"):
            configure_attention(layer, strategy=strategy, kernel=kernel)
            with torch.no_grad():
                got = layer._core(q, k, v)
            assert torch.allclose(got, expected, atol=2e-5), (strategy, kernel)


@pytest.mark.parametrize("kernel", available_kernels("cpu"))
def test_backends_agree_with_math(kernel: str) -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(4, 2, 100, 16) for _ in range(3))
    bias = torch.randn(2, 100, 100)
    ref, _ = attend(q, k, v, bias, scale=0.25, kernel="math")
    got, ran = attend(q, k, v, bias, scale=0.25, kernel=kernel)
    assert torch.allclose(got, ref, atol=1e-5)
    assert ran.startswith(kernel if kernel != "sdpa" else "sdpa:")


def test_sdpa_reports_fused_cpu_kernel() -> None:
    q = torch.randn(2, 2, 64, 16)
    _, ran = attend(q, q, q, scale=0.25, kernel="sdpa")
    assert ran == "sdpa:flash"


def test_odd_sizes_and_batch_consistency() -> None:
    model = build_model("ribsr-s-x3").eval()
    a, b = torch.rand(1, 3, 23, 37), torch.rand(1, 3, 23, 37)
    with torch.no_grad():
        both = model(torch.cat([a, b]))
        single = model(b)
    assert both.shape == (2, 3, 69, 111)
    assert torch.allclose(both[1:], single, atol=1e-5)


def test_cache_follows_weight_updates() -> None:
    model = build_model("ribsr-s-x2").eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        before = model(x)
        for name, p in model.named_parameters():
            if name.endswith("attn.to_q"):
                p.mul_(5.0)
        after = model(x)
        fresh = build_model("ribsr-s-x2").eval()
        fresh.load_state_dict(model.state_dict())
        expected = fresh(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs(name: str) -> None:
    model = build_model(name).eval()
    scale = PRESETS[name]["upscaling_factor"]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 11, 9))
    assert out.shape == (1, 3, 11 * scale, 9 * scale)
    assert torch.isfinite(out).all()


def test_rpb_and_nope_networks_run() -> None:
    for attn in ("RPB", "SDPA", "NoPE"):
        model = build_model(dict(dim=24, window_sizes=[4, 8], num_heads=2, ranks=4, n_blocks=1,
                                 attn_type=attn, upscaling_factor=2)).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 3, 10, 13)).shape == (1, 3, 20, 26)


def test_unknown_config_values_are_clear() -> None:
    with pytest.raises(ValueError, match="attn_type"):
        build_model(dict(attn_type="Bogus"))
    with pytest.raises(ValueError, match="upsampler_type"):
        build_model(dict(upsampler_type="deconv"))
    with pytest.raises(ValueError, match="unknown architecture key"):
        build_model(dict(dimension=3))


# ---- checkpoints ----------------------------------------------------------------

def test_reference_checkpoint_layouts_load(tmp_path: Path) -> None:
    model = build_model("SST-light-x4")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"params": sd, "params_ema": sd}, tmp_path / "net.pth")
    with pytest.raises(CheckpointError, match="ambiguous window sizes.*SST-light-x4.*SST-light\\+-x4"):
        load_model(tmp_path / "net.pth")
    loaded = load_model(tmp_path / "net.pth", arch="SST-light-x4")
    assert loaded.arch == model.arch


def test_detect_rpb_and_pixelshuffle_arch() -> None:
    arch = dict(dim=36, window_sizes=[4, 6], num_heads=[2, 3], ranks=4, n_blocks=2, attn_type="RPB",
                upscaling_factor=3, upsampler_type="pixelshuffle", intermediate_dim=20, exp_ratio=2)
    detected = detect_arch(build_model(arch).state_dict())
    assert detected["window_sizes"] == [4, 6]
    assert detected["num_heads"] == [2, 3]
    assert (detected["upscaling_factor"], detected["intermediate_dim"], detected["exp_ratio"]) == (3, 20, 2.0)


def test_safetensors_roundtrip_embeds_arch(tmp_path: Path) -> None:
    model = build_model("ribsr-s-x4").eval()
    save_model(model, tmp_path / "m.safetensors", {"steps": 3})
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.arch == model.arch and loaded.provenance == {"steps": 3}
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_bad_checkpoints_get_one_line_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    pickled = tmp_path / "object.pth"
    torch.save({"params": {"proj.weight": torch.zeros(1)}, "evil": Path("/")}, pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save(build_model("ribsr-s-x2").state_dict(), wrong)
    cases = [(garbage, None, "not a readable tensor checkpoint"),
             (pickled, None, "not a readable tensor checkpoint"),
             (tmp_path / "missing.pth", None, "no such file"),
             (wrong, "SST-light-x2", "does not fit the architecture: missing keys")]
    for path, arch, reason in cases:
        with pytest.raises(CheckpointError) as info:
            load_model(path, arch)
        assert reason in str(info.value) and "\n" not in str(info.value)
        assert str(path) in str(info.value)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    sd = build_model("ribsr-s-x2").state_dict()
    sd["proj.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"shape of proj.weight is \(32, 3, 5, 5\)"):
        load_model(tmp_path / "m.pth", "ribsr-s-x2")
