"""Real-photo models: `eval --degrade real`, the `-m real`/`-m clean` aliases, `--denoise` interpolation, and
the export plumbing that records degraded-input scores.

The clean/real pair here is built in a temporary weights folder: the shipped ×2 clean weights plus a "real"
model made from them by a seeded perturbation, so these tests do not wait for (or depend on) the real
training run, and exactness claims (S=0, S=1) are checked on two genuinely different weight sets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ribsr_cli.cli import app
from ribsr_cli.engine.checkpoint import CheckpointError, load_model, save_model
from ribsr_cli.engine.tiling import upscale_image
from ribsr_cli.engine.runtime import pick_memory_format
from ribsr_cli.evaluation import discover_dataset, evaluate, load_image
from ribsr_cli.imaging.metrics import psnr, ssim
from ribsr_cli.imaging.resize import imresize_np, modcrop
from ribsr_cli.training.degrade import degrade_for_eval

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
EXAMPLES = REPO / "examples"
runner = CliRunner()


def _photo_crop(size: int = 48) -> np.ndarray:
    """A real photo region (the cat's face in chelsea.png) as the LR input."""
    img = np.asarray(Image.open(EXAMPLES / "chelsea.png").convert("RGB"))
    return np.ascontiguousarray(img[100:100 + size, 150:150 + size])


def _make_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_blocks: int | None = None,
               damage_channels: int = 0) -> Path:
    """A weights folder holding the shipped ribsr-s-x2 and a perturbed copy shipped as ribsr-s-real-x2;
    with `real_blocks`, the copy is first grown to that many blocks (`engine.grow`), as ribsr-s6 real models are;
    with `damage_channels`, it is first made damage-conditioned (ribsr-sd: a zero damage_proj and an estimator)."""
    import dataclasses

    from ribsr_cli.engine.grow import deeper, estimator_keys, grow_state
    from ribsr_cli.engine.network import SST
    from ribsr_cli.fileutil import sha256_file

    folder = tmp_path / "weights"
    folder.mkdir()
    clean_entry = next(m for m in json.loads((WEIGHTS / "MANIFEST.json").read_text())["models"]
                       if m["name"] == "ribsr-s-x2")
    clean_entry.pop("metrics_degraded", None)  # measured below where a test needs it
    shutil.copy(WEIGHTS / clean_entry["file"], folder / clean_entry["file"])
    net = load_model(WEIGHTS / clean_entry["file"])
    if real_blocks:
        grown = SST(deeper(net.config, real_blocks))
        grown.load_state_dict(grow_state(net.state_dict(), net.config, grown.config))
        net = grown
    if damage_channels:
        torch.manual_seed(5)
        grown = SST(dataclasses.replace(net.config, damage_channels=damage_channels))
        grown.load_state_dict({**grow_state(net.state_dict(), net.config, grown.config),
                               **estimator_keys(grown.state_dict())})
        net = grown
    gen = torch.Generator().manual_seed(17)
    with torch.no_grad():  # the identity blocks' zero convs move too, so the extra blocks really act
        for p in net.parameters():
            spread = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.2
            p.add_(torch.randn(p.shape, generator=gen) * (0.05 * spread if p.numel() > 1 else 0.01))
    save_model(net, folder / "ribsr-s-real-x2.safetensors", {"name": "ribsr-s-real-x2"})
    real_entry = dict(clean_entry, name="ribsr-s-real-x2", file="ribsr-s-real-x2.safetensors", default=False,
                      variant="real", sha256=sha256_file(folder / "ribsr-s-real-x2.safetensors"),
                      training=dict(clean_entry["training"], init_from="ribsr-s-x2"))
    (folder / "MANIFEST.json").write_text(json.dumps({"models": [dict(clean_entry, variant="clean"), real_entry]}))
    monkeypatch.setenv("RIBSR_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("RIBSR_HOME", str(tmp_path / "home"))  # no stored models of the user's leak in
    return folder


@pytest.fixture()
def pair_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _make_pair(tmp_path, monkeypatch)


@pytest.fixture()
def deep_pair_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As pair_dir, with the real model six blocks deep against the clean model's three."""
    return _make_pair(tmp_path, monkeypatch, real_blocks=6)


@pytest.fixture()
def conditioned_pair_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As pair_dir, with a damage-conditioned real model (engine.damage) against the plain clean one."""
    return _make_pair(tmp_path, monkeypatch, damage_channels=3)


def _sr(net, lr: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return upscale_image(net, lr, 2)


# ---- -m real / -m clean and --denoise ----------------------------------------------------------------

def test_aliases_pick_the_variant_and_real_is_never_the_default(pair_dir: Path) -> None:
    from ribsr_cli.catalog import default_model
    from ribsr_cli.engine.registry import resolve

    assert default_model(2).name == "ribsr-s-x2"
    assert resolve("real", 2).name == "ribsr-s-real-x2"
    assert resolve("CLEAN", 2).name == "ribsr-s-x2"
    with pytest.raises(CheckpointError, match=r"no shipped real model for x3 \(real models ship for: x2\)"):
        resolve("real", 3)


def test_denoise_endpoints_reproduce_the_two_models_bit_for_bit(pair_dir: Path) -> None:
    from ribsr_cli.engine.registry import resolve

    lr = _photo_crop()
    clean, real = resolve(None, 2).network, resolve("real", 2).network
    out_clean, out_real = _sr(clean, lr), _sr(real, lr)
    assert not np.array_equal(out_clean, out_real)  # the pair really differs, so equality below means something
    for strength, model, ref_net, ref_out in [(0.0, None, clean, out_clean), (1.0, "real", real, out_real),
                                              (0.0, "ribsr-s-real-x2", clean, out_clean)]:
        loaded = resolve(model, 2, denoise=strength)
        mixed = loaded.network
        assert loaded.name == f"ribsr-s-x2+real@{strength:g}"
        for key, value in ref_net.state_dict().items():
            assert torch.equal(mixed.state_dict()[key], value), key
        assert np.array_equal(_sr(mixed, lr), ref_out)


def test_denoise_half_is_the_average_and_names_both_weights(pair_dir: Path) -> None:
    from ribsr_cli.catalog import find_model
    from ribsr_cli.engine.registry import resolve

    clean, real = resolve("clean", 2).network, resolve("real", 2).network
    loaded = resolve("ribsr-s-x2", 2, denoise=0.5)
    mixed = loaded.network
    assert loaded.name == "ribsr-s-x2+real@0.5"
    c_sha, r_sha = find_model("ribsr-s-x2").sha256, find_model("ribsr-s-real-x2").sha256
    assert loaded.sha256 == f"{c_sha}+{r_sha}" and loaded.source == "shipped"
    assert [(c["name"], c["sha256"], c["weight"]) for c in loaded.components] == [
        ("ribsr-s-x2", c_sha, 0.5), ("ribsr-s-real-x2", r_sha, 0.5)]
    c_state, r_state = clean.state_dict(), real.state_dict()
    for key, value in mixed.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (c_state[key] + r_state[key]) / 2, rtol=0, atol=1e-7)
    lr = _photo_crop()
    out = _sr(mixed, lr)
    assert not np.array_equal(out, _sr(clean, lr)) and not np.array_equal(out, _sr(real, lr))


def _both_ends_upscale_exactly(field: str, values: tuple[int, int]):
    """(clean, real) networks of the pair, after checking that they differ in `field` as `values` says and that
    --denoise 0 and 1 (built in the real model's shape) upscale a photo exactly as the clean and real models."""
    from ribsr_cli.engine.registry import resolve

    lr = _photo_crop()
    clean, real = resolve("clean", 2).network, resolve("real", 2).network
    assert (getattr(clean.config, field), getattr(real.config, field)) == values
    out_clean, out_real = _sr(clean, lr), _sr(real, lr)
    assert not np.array_equal(out_clean, out_real)
    for strength, reference in ((0.0, out_clean), (1.0, out_real)):
        mixed = resolve(None, 2, denoise=strength).network
        assert getattr(mixed.config, field) == values[1]
        assert np.array_equal(_sr(mixed, lr), reference), strength
    return clean, real


def test_denoise_with_a_deeper_real_model_keeps_both_ends_exact(deep_pair_dir: Path) -> None:
    """ribsr-s6 real models pair with 3-block clean ones: S=0 must still upscale exactly as the clean model."""
    from ribsr_cli.engine.grow import grow_state
    from ribsr_cli.engine.registry import resolve

    clean, real = _both_ends_upscale_exactly("n_blocks", (3, 6))
    half = resolve(None, 2, denoise=0.5).network.state_dict()
    grown = grow_state(clean.state_dict(), clean.config, real.config)
    for key, value in real.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(half[key], (grown[key] + value) / 2, rtol=0, atol=1e-7)


def test_denoise_with_a_damage_conditioned_real_model_keeps_both_ends_exact(conditioned_pair_dir: Path) -> None:
    """A ribsr-sd real model pairs with its plain clean partner: at S=0 the damage weights are zero, so the mix
    upscales exactly as the clean model whatever the estimator reads; the estimator is the real model's own."""
    from ribsr_cli.engine.registry import resolve

    _, real = _both_ends_upscale_exactly("damage_channels", (0, 3))
    half = resolve(None, 2, denoise=0.5).network.state_dict()
    r_state = real.state_dict()
    torch.testing.assert_close(half["damage_proj.weight"], r_state["damage_proj.weight"] / 2, rtol=0, atol=1e-7)
    for key in (k for k in r_state if k.startswith("estimator.")):
        assert torch.equal(half[key], r_state[key]), key


def test_a_model_with_other_widths_is_refused_for_denoise(pair_dir: Path) -> None:
    from ribsr_cli.engine.network import SST
    from ribsr_cli.engine.presets import get_config
    from ribsr_cli.engine.registry import resolve
    from ribsr_cli.fileutil import sha256_file

    wide = SST(get_config("SST-light", 2))  # dim 48: not a grown ribsr-s
    save_model(wide, pair_dir / "ribsr-s-real-x2.safetensors", {"name": "ribsr-s-real-x2"})
    manifest = json.loads((pair_dir / "MANIFEST.json").read_text())
    manifest["models"][1]["sha256"] = sha256_file(pair_dir / "ribsr-s-real-x2.safetensors")
    (pair_dir / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="differ in architecture"):
        resolve(None, 2, denoise=0.5)


def test_denoise_refuses_a_model_outside_a_pair_in_one_line(pair_dir: Path, tmp_path: Path) -> None:
    photo = tmp_path / "in.png"
    Image.fromarray(_photo_crop(32)).save(photo)
    checkpoint = tmp_path / "mine.safetensors"
    shutil.copy(pair_dir / "ribsr-s-x2.safetensors", checkpoint)
    result = runner.invoke(app, ["upscale", str(photo), "-o", str(tmp_path / "out"), "-m", str(checkpoint),
                                 "--denoise", "0.5"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--denoise" in lines[0] and "mine.safetensors" in lines[0]
    result = runner.invoke(app, ["upscale", str(photo), "-o", str(tmp_path / "out"), "-s", "3", "--denoise", "0.5"])
    assert result.exit_code == 2 and "x3" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_upscale_and_eval_record_the_mix(pair_dir: Path, tmp_path: Path) -> None:
    from ribsr_cli.catalog import find_model

    shas = [find_model(n).sha256 for n in ("ribsr-s-x2", "ribsr-s-real-x2")]
    photo = tmp_path / "cat.png"
    Image.fromarray(_photo_crop(40)).save(photo)
    report = tmp_path / "up.json"
    result = runner.invoke(app, ["upscale", str(photo), "-o", str(tmp_path / "out"), "--denoise", "0.25",
                                 "--name", "{stem}_{model}", "--json", str(report), "-q"])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["model"] == "ribsr-s-x2+real@0.25" and doc["model_sha256"] == "+".join(shas)
    assert (tmp_path / "out" / "cat_ribsr-s-x2+real@0.25.png").is_file()

    data = tmp_path / "set" / "HR"
    data.mkdir(parents=True)
    Image.fromarray(_photo_crop(64)).save(data / "cat.png")
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(data.parent), "--degrade", "real", "--denoise", "0.25", "--json",
                                 str(out), "-q"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(out.read_text())["protocol"]["models"]
    assert entry["name"] == "ribsr-s-x2+real@0.25"
    assert [(c["sha256"], c["weight"]) for c in entry["interpolated_from"]] == [(shas[0], 0.75), (shas[1], 0.25)]


# ---- eval --degrade real ---------------------------------------------------------------------------------

def _hand_scores(folder: Path, scale: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Per image, per method: degrade by hand, run the network, score with imaging.metrics."""
    net = load_model(WEIGHTS / f"ribsr-s-x{scale}.safetensors")
    # in the layout eval's runner stores feature maps in (the float summation order, not the scoring, differs)
    net.use_memory_format(pick_memory_format(torch.device("cpu")))
    scores: dict[str, dict[str, tuple[float, float]]] = {"bicubic": {}, "model": {}}
    for hr_file in discover_dataset(folder).hr_files:
        hr = modcrop(load_image(hr_file), scale)
        lr = degrade_for_eval(hr, scale)
        with torch.no_grad():
            sr = upscale_image(net, lr, scale)
        for method, out in (("bicubic", imresize_np(lr, float(scale))), ("model", sr)):
            scores[method][hr_file.stem] = (psnr(out, hr, scale), ssim(out, hr, scale))
    return scores


@pytest.mark.parametrize("where", ["Set5", "examples"])
def test_eval_degrade_real_equals_an_independent_computation(where: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import BENCHMARKS

    folder = EXAMPLES if where == "examples" else BENCHMARKS / "Set5"
    if not folder.is_dir():
        pytest.skip(f"benchmark images not found at {BENCHMARKS}")
    monkeypatch.delenv("RIBSR_WEIGHTS_DIR", raising=False)
    torch.set_num_threads(1)
    scale = 4
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(folder), "-s", str(scale), "--degrade", "real", "--json", str(out),
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert "degraded input" in result.output and "Warning" not in result.output  # no published-bicubic check
    doc = json.loads(out.read_text())
    assert doc["protocol"]["degrade"] == "real" and "degrade_for_eval" in doc["protocol"]["degradation"]
    expected = _hand_scores(folder, scale)
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"bicubic", "ribsr-s-x4"}
    for method, key in (("bicubic", "bicubic"), ("ribsr-s-x4", "model")):
        got = {p["name"]: (p["psnr_y"], p["ssim_y"]) for p in rows[method]["per_image"]}
        assert got.keys() == expected[key].keys()
        for name, (p, s) in expected[key].items():
            assert got[name][0] == pytest.approx(p, abs=1e-6) and got[name][1] == pytest.approx(s, abs=1e-6)
    if where == "Set5":  # the degraded bicubic is far below the clean protocol's published 28.42 dB
        assert rows["bicubic"]["psnr_y"] < 28.42 - 1.0


def test_eval_degrade_rejects_unknown_modes_and_conflicts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", str(EXAMPLES), "--no-model", "--degrade", "jpeg"])
    assert result.exit_code == 2 and "choose none, bicubic, real or real:" in result.output
    result = runner.invoke(app, ["eval", str(EXAMPLES), "--no-model", "--degrade", "real", "--ignore-lr"])
    assert result.exit_code == 2 and "exclude" in result.output
    for bad in ("real:blur=x", "real:sharpen=2", "real:jpeg=80.5", "real:noise=-1", "real:jpeg=inf"):
        result = runner.invoke(app, ["eval", str(EXAMPLES), "--no-model", "--degrade", bad])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and bad in lines[0], (bad, result.output)


def test_other_recipes_of_the_real_family(tmp_path: Path) -> None:
    """`--degrade real:blur=S,noise=N,jpeg=Q`: zeros reduce it to the bicubic protocol exactly, the official
    values are `real` itself, and another point changes the input and is named in the protocol record."""
    from ribsr_cli.training.degrade import OFFICIAL_RECIPE, EvalRecipe

    photo = modcrop(_photo_crop(96), 4)
    nothing = EvalRecipe.parse("real:blur=0,noise=0,jpeg=0")
    assert np.array_equal(degrade_for_eval(photo, 4, nothing), imresize_np(photo, 1 / 4))
    assert EvalRecipe.parse("real:blur=0.8,noise=4,jpeg=80") == OFFICIAL_RECIPE and OFFICIAL_RECIPE.name == "real"
    other = EvalRecipe.parse("real:jpeg=95")
    assert (other.blur, other.noise, other.jpeg) == (0.8, 4.0, 95) and other.name == "real:blur=0.8,noise=4,jpeg=95"
    assert not np.array_equal(degrade_for_eval(photo, 4, other), degrade_for_eval(photo, 4))
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(EXAMPLES), "-s", "4", "--no-model", "-q", "--degrade", "real:jpeg=95",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert "quality 95" in record["protocol"]["degradation"] and record["protocol"]["degrade"] == "real:jpeg=95"


# ---- export: degraded scores in the manifest and README table --------------------------------------------

def test_remeasure_adds_degraded_scores_without_touching_the_weights(pair_dir: Path, tmp_path: Path) -> None:
    from ribsr_cli.training.export import models_table, remeasure

    bench = tmp_path / "bench" / "Set5"
    bench.mkdir(parents=True)
    for name in ("astronaut", "coffee"):  # small real-photo crops stand in for Set5, to keep the test quick
        img = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"))
        Image.fromarray(np.ascontiguousarray(img[100:196, 120:216])).save(bench / f"{name}.png")
    weights_file = pair_dir / "ribsr-s-x2.safetensors"
    before_bytes = weights_file.read_bytes()
    before = {m["name"]: m for m in json.loads((pair_dir / "MANIFEST.json").read_text())["models"]}
    entry = remeasure("ribsr-s-x2", bench.parent)
    after = {m["name"]: m for m in json.loads((pair_dir / "MANIFEST.json").read_text())["models"]}
    assert weights_file.read_bytes() == before_bytes
    assert after["ribsr-s-x2"]["sha256"] == before["ribsr-s-x2"]["sha256"]
    assert {k: v for k, v in after["ribsr-s-x2"].items() if k != "metrics_degraded"} == before["ribsr-s-x2"]
    assert after["ribsr-s-real-x2"] == before["ribsr-s-real-x2"]

    from ribsr_cli.engine.runner import RunOptions, load_upscaler

    fn = load_upscaler("ribsr-s-x2", 2, RunOptions(device="cpu").for_scoring())
    name = fn.name
    report = evaluate([discover_dataset(bench)], [2], {name: fn}, degrade="real")
    assert entry["metrics_degraded"]["Set5"]["psnr_y"] == round(report.result("Set5", 2, name).psnr, 3)
    assert entry["metrics_degraded"]["Set5"]["bicubic_psnr_y"] == round(report.result("Set5", 2, "bicubic").psnr, 3)

    table = models_table(list(after.values()))
    header, _, *rows = table.splitlines()
    assert "degraded Set5" in header and len(header.split("|")) == len(rows[0].split("|"))
    assert "`ribsr-s-real-x2` (real photos)" in table and "fine-tuned from `ribsr-s-x2`" in table
    assert f"{entry['metrics_degraded']['Set5']['psnr_y']:.2f} / " in rows[0] and "n/a" in rows[1]


def test_a_trial_export_writes_its_own_readme_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RIBSR_WEIGHTS_DIR (a trial, as scripts/train_real.sh suggests): the table goes to the trial folder's
    README, created when missing, never to the repository's."""
    from ribsr_cli.training.export import README_MARKERS, readme_path, update_readme

    trial = tmp_path / "trial"
    trial.mkdir()
    monkeypatch.setenv("RIBSR_WEIGHTS_DIR", str(trial))
    models = json.loads((WEIGHTS / "MANIFEST.json").read_text())["models"]
    assert readme_path() == trial / "README.md"
    assert update_readme(readme_path(), models)
    text = (trial / "README.md").read_text()
    assert text.startswith(README_MARKERS[0]) and "`ribsr-s-real-x2` (real photos)" in text
    assert update_readme(readme_path(), models) and (trial / "README.md").read_text() == text  # and again


def test_export_refuses_to_make_a_real_model_the_default(tmp_path: Path) -> None:
    from ribsr_cli.errors import RibsrError
    from ribsr_cli.training.export import export

    run = tmp_path / "ribsr-s-real-x2"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"degradation": "real", "init_from": "weights/ribsr-s-x2.safetensors"}))
    with pytest.raises((SystemExit, RibsrError), match="never the default"):
        export(run, "ribsr-s-real-x2", True, tmp_path, EXAMPLES / "astronaut.png")
