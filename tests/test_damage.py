"""Damage conditioning (engine.damage): the camera model records what it drew, a conditioned network grown
from the clean one computes exactly the clean model, the runner tells every tile of an image one estimate,
the trained estimator reads independently made damage in the right order, and a conditioned run trains
with its estimator frozen.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ribsr_cli.cli import app
from ribsr_cli.engine.checkpoint import detect_arch, load_model, preset_name_of
from ribsr_cli.engine.damage import (JPEG_MCU, Damage, DamageEstimator, crop_grid, estimate_image_damage,
                                    luma_noise)
from ribsr_cli.engine.grow import grow_state
from ribsr_cli.engine.network import SST
from ribsr_cli.engine.presets import get_config
from ribsr_cli.engine.runner import LoadedModel, RunOptions, Upscaler
from ribsr_cli.engine.tiling import upscale_image
from ribsr_cli.imaging.resize import imresize
from ribsr_cli.pixels import LUMA
from ribsr_cli.training.degrade import (DEFAULT_CONFIG, EvalRecipe, degrade, degrade_batch_with_damage,
                                        degrade_for_eval, degrade_with_damage)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
#: the estimator trained for the x2 conditioned model (committed with its run: the learning curve beside it);
#: v3 reads the noise in luminance (0.9.0), v2 per channel
ESTIMATOR = REPO / "runs" / "damage-estimator-x2-v3" / "estimator.safetensors"


def _photo(name: str = "coffee.png", box: tuple[int, int, int, int] = (200, 120, 264, 184)) -> np.ndarray:
    with Image.open(EXAMPLES / name) as im:
        return np.array(im.convert("RGB").crop(box))


def _hr_tensor(size: int = 96) -> torch.Tensor:
    return torch.from_numpy(_photo(box=(150, 100, 150 + size, 100 + size))).permute(2, 0, 1).float() / 255


# ---- units and the camera model's record ---------------------------------------------------------------

def test_damage_units_round_trip_and_poisson_equivalent() -> None:
    d = Damage(blur=0.4, noise=4.0, jpeg=80)
    assert Damage.from_vector(d.vector()) == pytest.approx(d)
    assert Damage().vector() == [0.0, 0.0, 0.0]  # a clean bicubic LR tells the network nothing
    assert Damage.from_vector([-0.2, -1.0, -0.5]) == Damage()  # estimates below zero are clamped to physical
    # Poisson noise of peak P at mid grey (0.5): variance 0.5 / P on [0, 1], i.e. 255 * sqrt(0.5 / P) levels
    assert Damage.poisson_sigma(2000) == pytest.approx(255 * math.sqrt(0.5 / 2000))
    assert Damage(0.4, 4.0, 80).describe() == "blur 0.40 px, noise 4.0 levels, JPEG q80"
    assert "no JPEG" in Damage().describe()


def test_the_camera_model_records_the_damage_it_drew() -> None:
    hr = _hr_tensor()
    fixed = dataclasses.replace(
        DEFAULT_CONFIG, camera_prob=1.0, camera_blur_prob=1.0, camera_blur_sigma_lr=(0.5, 0.5), camera_noise_prob=1.0,
        gaussian_noise_prob=1.0, grey_noise_prob=0.0, camera_noise_sigma=(3 / 255, 3 / 255), jpeg_prob_final=1.0,
        jpeg_quality_final=(77, 77))
    lr, damage = degrade_with_damage(hr, 2, 5, fixed)
    # colour noise of 3 levels per channel is 3 |LUMA| levels in luminance
    assert damage == pytest.approx(Damage(blur=0.5, noise=3.0 * math.hypot(*LUMA), jpeg=77.0))
    assert torch.equal(lr, degrade(hr, 2, 5, fixed))  # the record costs no draw: same seed, same LR
    # the noise number is what the picture shows in luminance: the Y of what the draw added has that std,
    # for grey noise (one field in every channel) and for colour noise alike
    for grey_prob in (1.0, 0.0):
        noisy = dataclasses.replace(fixed, camera_blur_prob=0.0, jpeg_prob_final=0.0, grey_noise_prob=grey_prob,
                                    camera_noise_sigma=(5 / 255, 5 / 255))
        quiet = dataclasses.replace(noisy, camera_noise_prob=0.0)
        lr, damage = degrade_with_damage(hr, 2, 5, noisy)
        added_y = sum(w * c for w, c in zip(LUMA, (lr - degrade(hr, 2, 5, quiet)) * 255))
        assert damage.noise == pytest.approx(5.0 if grey_prob else 5.0 * math.hypot(*LUMA))
        assert added_y.std().item() == pytest.approx(damage.noise, rel=0.1), grey_prob

    nothing = dataclasses.replace(fixed, camera_blur_prob=0.0, camera_noise_prob=0.0, jpeg_prob_final=0.0)
    lr, damage = degrade_with_damage(hr, 2, 5, nothing)
    assert damage == Damage()
    poisson = dataclasses.replace(fixed, gaussian_noise_prob=0.0, camera_poisson_peak=(2000.0, 2000.0))
    assert degrade_with_damage(hr, 2, 5, poisson)[1].noise == pytest.approx(luma_noise(Damage.poisson_sigma(2000), False))
    assert luma_noise(4.0, grey=True) == 4.0 and luma_noise(4.0, grey=False) == pytest.approx(2.674, abs=1e-3)
    chain = dataclasses.replace(DEFAULT_CONFIG, camera_prob=0.0)
    assert degrade_with_damage(hr, 2, 5, chain)[1] is None  # the two-order chain has no three numbers


def test_after_jpeg_the_colour_part_of_the_noise_is_gone_and_luminance_tells_them_apart() -> None:
    """Why the noise number is luminance noise (engine.damage): after JPEG's 4:2:0 chroma, colour noise and
    grey noise of the same sigma per channel leave the same chroma detail, so the per-channel sigma cannot be
    read from a file, while the luminance detail differs as the two luminance sigmas do."""
    hr = torch.from_numpy(_photo(box=(100, 100, 356, 356))).permute(2, 0, 1).float() / 255

    def steps(lr: torch.Tensor) -> tuple[float, float]:  # mean |neighbour step| of Y and of Cb, Cr (levels)
        r, g, b = lr * 255
        planes = (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b, -0.1687 * r - 0.3313 * g + 0.5 * b,
                  0.5 * r - 0.4187 * g - 0.0813 * b)
        detail = [float((p[1:] - p[:-1]).abs().mean() + (p[:, 1:] - p[:, :-1]).abs().mean()) for p in planes]
        return detail[0], detail[1] + detail[2]

    base = dataclasses.replace(DEFAULT_CONFIG, camera_prob=1.0, camera_blur_prob=0.0, camera_noise_prob=1.0,
                               gaussian_noise_prob=1.0, camera_noise_sigma=(5 / 255, 5 / 255), jpeg_prob_final=1.0,
                               jpeg_quality_final=(85, 85))
    (y_grey, c_grey), (y_colour, c_colour) = (
        steps(degrade_with_damage(hr, 2, 7, dataclasses.replace(base, grey_noise_prob=p))[0]) for p in (1.0, 0.0))
    assert abs(c_colour - c_grey) < 0.05 * c_grey  # the chroma the file keeps does not tell them apart
    assert y_grey > y_colour * 1.05  # the luminance noise does (5 against 3.3 levels)
    without_jpeg = dataclasses.replace(base, jpeg_prob_final=0.0)
    c_grey_raw, c_colour_raw = (steps(degrade_with_damage(hr, 2, 7, dataclasses.replace(without_jpeg, grey_noise_prob=p))[0])[1]
                                for p in (1.0, 0.0))
    assert c_colour_raw > 1.5 * c_grey_raw  # before JPEG the colour noise was plainly there


def test_batches_carry_vectors_clean_samples_zero_and_chain_samples_none() -> None:
    hr = (_hr_tensor(48)[None].repeat(4, 1, 1, 1) * 255).round().to(torch.uint8)
    clean = dataclasses.replace(DEFAULT_CONFIG, clean_prob=1.0)
    lr, vectors = degrade_batch_with_damage(hr, 2, np.random.default_rng(1), clean)
    assert torch.equal(lr, imresize(hr, 0.5)) and not vectors.any()
    camera = dataclasses.replace(DEFAULT_CONFIG, clean_prob=0.0, camera_prob=1.0, jpeg_prob_final=1.0)
    _, vectors = degrade_batch_with_damage(hr, 2, np.random.default_rng(1), camera)
    assert vectors.shape == (4, 3) and (vectors[:, 2] > 0).all()  # JPEG every time: quality below 100
    _, vectors = degrade_batch_with_damage(hr, 2, np.random.default_rng(1),
                                           dataclasses.replace(DEFAULT_CONFIG, clean_prob=0.0, camera_prob=0.0))
    assert vectors is None


# ---- the network -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["ribsr-sd", "ribsr-sdm"])
@pytest.mark.usefixtures("one_thread")
def test_a_conditioned_network_grown_from_the_clean_one_is_the_clean_model_whatever_it_is_told(preset: str) -> None:
    clean = load_model(REPO / "weights" / "ribsr-s-x2.safetensors").eval()
    conditioned = SST(get_config(preset, 2)).eval()
    state = grow_state(clean.state_dict(), clean.config, conditioned.config)
    state.update({k: v for k, v in conditioned.state_dict().items() if k.startswith("estimator.")})
    conditioned.load_state_dict(state)
    x = torch.from_numpy(_photo()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        reference = clean(x)
        for told in (torch.zeros(3), torch.tensor([0.4, 0.5, 0.5]), None):  # None: its own estimate
            assert torch.equal(conditioned(x, told), reference)
    # the file layout says what it is: three damage maps (and per-layer modulation), the preset
    arch = detect_arch(conditioned.state_dict())
    assert arch["damage_channels"] == 3 and preset_name_of(arch) == f"{preset}-x2"
    assert "damage_channels" not in clean.arch  # reference networks keep the authors' network_g layout
    if preset == "ribsr-sdm":  # once the layers' modulation is trained, what the network is told matters
        with torch.no_grad():
            for name, p in conditioned.named_parameters():
                if "damage_mod" in name:
                    p.normal_(0, 0.05)
            light, heavy = conditioned(x, torch.tensor([0.1, 0.1, 0.1])), conditioned(x, torch.tensor([0.8, 0.8, 0.8]))
        assert not torch.equal(light, heavy) and not torch.equal(light, reference)


def test_estimate_crops_sit_on_the_jpeg_grid_inside_the_image() -> None:
    for h, w in ((256, 256), (1000, 1500), (130, 4000), (128, 128)):
        corners = crop_grid(h, w, 128)
        assert 1 <= len(corners) <= 16
        assert all(y % JPEG_MCU == 0 and x % JPEG_MCU == 0 and y + 128 <= h and x + 128 <= w for y, x in corners)
    assert len(crop_grid(3000, 4000)) == 16  # a 12 MP photo costs the same 16 crops as a small one


@pytest.mark.usefixtures("one_thread")
def test_the_runner_tells_every_tile_one_estimate_from_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = SST(get_config("ribsr-sd", 2)).eval()
    with torch.no_grad():  # the conditioning must matter for the check below to mean anything
        net.damage_proj.weight.normal_(0, 0.5)
    calls = []
    forward = net.estimator.forward
    monkeypatch.setattr(net.estimator, "forward", lambda x: calls.append(x.shape) or forward(x))
    image = _photo(box=(100, 80, 260, 240))  # 160 x 160: tiled at 64 px below
    upscaler = Upscaler(LoadedModel.of(net), RunOptions(tile=64, precision="fp32"))
    tiled, tile = upscaler.run(image)
    assert tile == 64 and len(calls) == 1  # one estimate for the image, not one per tile
    expected = estimate_image_damage(net.estimator, image)
    assert torch.equal(net.damage, expected)
    assert upscaler.last_damage == Damage.from_vector(expected)
    net.condition(expected)
    with torch.no_grad():
        told = upscale_image(net, image, 2, tile=64, overlap=32)
    assert np.array_equal(tiled, told)
    net.condition(None)
    with torch.no_grad():  # left to itself, each tile would read its own damage: a different picture
        per_tile = upscale_image(net, image, 2, tile=64, overlap=32)
    assert not np.array_equal(per_tile, tiled)


# ---- the trained estimator on independently made damage --------------------------------------------------

@pytest.mark.skipif(not ESTIMATOR.is_file(), reason="the trained x2 estimator is committed with its run")
@pytest.mark.usefixtures("one_thread")
def test_the_trained_estimator_reads_eval_recipes_in_order_and_near_their_values() -> None:
    """`degrade_for_eval` (numpy blur, MATLAB bicubic, seeded Gaussian noise, Pillow JPEG) is not the training
    pipeline; the estimator must still read its damage: heavier recipes read heavier in every component, and the
    official recipe reads near its values."""
    from safetensors.torch import load_file

    estimator = DamageEstimator().eval()
    estimator.load_state_dict(load_file(str(ESTIMATOR)))
    with Image.open(EXAMPLES / "coffee.png") as im:
        hr = np.asarray(im.convert("RGB"))
    light, official, heavy = (EvalRecipe(blur=0.3, noise=1.5, jpeg=92), EvalRecipe(),
                              EvalRecipe(blur=1.4, noise=7.0, jpeg=65))
    read = {r: Damage.from_vector(estimate_image_damage(estimator, degrade_for_eval(hr, 2, r)))
            for r in (light, official, heavy)}
    for key in ("blur", "noise"):
        assert getattr(read[light], key) < getattr(read[official], key) < getattr(read[heavy], key), key
    assert read[light].jpeg > read[official].jpeg > read[heavy].jpeg
    truth = Damage(blur=0.8 / 2, noise=luma_noise(4.0, grey=False), jpeg=80)  # the recipe's is colour noise
    assert official.damage(2) == pytest.approx(truth)
    assert abs(read[official].blur - truth.blur) < 0.15
    assert abs(read[official].noise - truth.noise) < 0.8
    assert abs(read[official].jpeg - truth.jpeg) < 8


# ---- training --------------------------------------------------------------------------------------------

def test_a_conditioned_run_needs_its_estimator_and_the_camera_model(tmp_path: Path, pool: Path) -> None:
    base = ["train", "--arch", "ribsr-sd", "--degradation", "real", "--data", str(pool), "--val", "",
            "--steps", "3", "--warmup", "1", "--patch", "24", "--batch", "2",
            "--init-from", str(REPO / "weights" / "ribsr-s-x2.safetensors")]
    runner = CliRunner()
    camera = tmp_path / "camera.json"
    camera.write_text(json.dumps({"camera_prob": 1.0}))
    no_estimator = runner.invoke(app, base + ["--out", str(tmp_path / "a"), "--degradation-config", str(camera)])
    assert no_estimator.exit_code == 2 and "give --damage-estimator FILE" in no_estimator.output
    estimator = tmp_path / "estimator.safetensors"
    from safetensors.torch import save_file

    torch.manual_seed(3)
    save_file(DamageEstimator().state_dict(), str(estimator))
    chain = runner.invoke(app, base + ["--out", str(tmp_path / "b"), "--damage-estimator", str(estimator)])
    assert chain.exit_code == 2 and "camera_prob 1" in chain.output  # the default mix has chain samples
    bicubic = runner.invoke(app, ["train", "--arch", "ribsr-sd", "--damage-estimator", str(estimator),
                                  "--out", str(tmp_path / "c")])
    assert bicubic.exit_code == 2 and "needs --degradation real" in bicubic.output

    run = tmp_path / "run"
    ok = runner.invoke(app, base + ["--out", str(run), "--degradation-config", str(camera),
                                    "--damage-estimator", str(estimator)])
    assert ok.exit_code == 0, ok.output
    state = torch.load(run / "last.pt", weights_only=True)
    start = load_model(REPO / "weights" / "ribsr-s-x2.safetensors").state_dict()
    trained = state["model"]
    assert state["step"] == 3
    from safetensors.torch import load_file

    for key, value in load_file(str(estimator)).items():  # frozen: exactly the file it was given
        assert torch.equal(trained[f"estimator.{key}"], value), key
    # the damage maps' weights started at zero and learned; the image's own conv started at the clean weights
    assert trained["damage_proj.weight"].abs().sum() > 0
    assert not torch.equal(trained["proj.weight"], start["proj.weight"])
    assert json.loads((run / "config.json").read_text())["damage_estimator"] == str(estimator)
    # a run continued from a conditioned checkpoint takes the estimator that checkpoint carries
    follow = tmp_path / "follow"
    carried = runner.invoke(app, [a if a != str(REPO / "weights" / "ribsr-s-x2.safetensors") else str(run / "ema.safetensors")
                                  for a in base] + ["--out", str(follow), "--degradation-config", str(camera)])
    assert carried.exit_code == 0, carried.output
    followed = torch.load(follow / "last.pt", weights_only=True)["model"]
    for key, value in load_file(str(estimator)).items():
        assert torch.equal(followed[f"estimator.{key}"], value), key

    # a better estimator later: `install` swaps it into every file of the run and leaves the network alone
    from ribsr_cli.training.damage_estimator import install

    torch.manual_seed(4)
    other = tmp_path / "other.safetensors"
    save_file(DamageEstimator().state_dict(), str(other))
    before = load_model(run / "ema.safetensors").state_dict()
    install(other, run, log=lambda _: None)
    after = load_model(run / "ema.safetensors").state_dict()
    resumable = torch.load(run / "last.pt", weights_only=True)
    for key, value in load_file(str(other)).items():
        assert torch.equal(after[f"estimator.{key}"], value) and torch.equal(resumable["ema"][f"estimator.{key}"], value)
    for key, value in before.items():
        if not key.startswith("estimator."):
            assert torch.equal(after[key], value), key
    assert json.loads((run / "config.json").read_text())["damage_estimator"] == str(other)
    # resumed with the command it started with, the run keeps (and records) the estimator it now carries
    again = runner.invoke(app, [a if a != "3" else "4" for a in base] + [
        "--out", str(run), "--degradation-config", str(camera), "--damage-estimator", str(estimator)])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "config.json").read_text())["damage_estimator"] == str(other)
    resumed = torch.load(run / "last.pt", weights_only=True)
    assert resumed["step"] == 4
    for key, value in load_file(str(other)).items():
        assert torch.equal(resumed["model"][f"estimator.{key}"], value), key
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("ema.safetensors", "config.json"):
        (plain / name).write_bytes((REPO / "runs" / "ribsr-s-real-x2-typical" / name).read_bytes())
    with pytest.raises(ValueError, match="not a damage-conditioned network"):
        install(other, plain)


@pytest.mark.usefixtures("one_thread")
def test_upscale_reports_the_damage_it_read_per_file(tmp_path: Path) -> None:
    """`upscale -v` prints, and `--json` records, what a damage-conditioned model read from each file."""
    from safetensors.torch import load_file

    from ribsr_cli.engine.checkpoint import save_model

    net = SST(get_config("ribsr-sd", 2)).eval()
    if ESTIMATOR.is_file():
        net.estimator.load_state_dict(load_file(str(ESTIMATOR)))
    model = tmp_path / "sd.safetensors"
    save_model(net, model)
    Image.fromarray(_photo(box=(100, 80, 228, 208))).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "in.png"), "-m", str(model), "-o", str(tmp_path / "out"),
                                      "-v", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    read = json.loads((tmp_path / "r.json").read_text())["files"][0]["damage_read"]
    assert read.startswith("blur ") and "levels" in read
    assert f"read damage: {read}" in " ".join(result.output.split())


def _told_run_setup(tmp_path: Path, pool: Path) -> tuple[DamageEstimator, list[str]]:
    """For the `--damage-told` tests: the frozen estimator a run is given (the committed v3, else a seeded
    random one) and the `ribsr train` arguments of a 2-step ribsr-sd run on camera-model damage with it, out
    to tmp_path/run."""
    from safetensors.torch import load_file, save_file

    camera = tmp_path / "camera.json"
    camera.write_text(json.dumps({"camera_prob": 1.0, "clean_prob": 0.0}))
    estimator_file = ESTIMATOR if ESTIMATOR.is_file() else tmp_path / "estimator.safetensors"
    if not ESTIMATOR.is_file():
        torch.manual_seed(3)
        save_file(DamageEstimator().state_dict(), str(estimator_file))
    estimator = DamageEstimator().eval()
    estimator.load_state_dict(load_file(str(estimator_file)))
    return estimator, ["train", "--arch", "ribsr-sd", "--degradation", "real", "--degradation-config", str(camera),
                       "--data", str(pool), "--val", "", "--steps", "2", "--warmup", "1", "--patch", "32",
                       "--batch", "2", "--out", str(tmp_path / "run"),
                       "--init-from", str(REPO / "weights" / "ribsr-s-x2.safetensors"),
                       "--damage-estimator", str(estimator_file)]


def test_damage_told_estimate_tells_the_network_its_estimators_reading(tmp_path: Path, pool: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`--damage-told estimate`: each step's network is told what its frozen estimator reads from that step's
    LR patches (as at run time), not the drawn damage; recorded in the run, kept by a plain resume, a different
    value on resume or a plain network refused in one line."""
    from ribsr_cli.training import trainer

    told: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = trainer._optimise

    def recording(net, model, ema, opt, cfg, step, lr_batch, hr_batch, device, autocast, damage=None):
        told.append((lr_batch.clone(), damage.clone()))
        return real(net, model, ema, opt, cfg, step, lr_batch, hr_batch, device, autocast, damage)
    monkeypatch.setattr(trainer, "_optimise", recording)
    estimator, base = _told_run_setup(tmp_path, pool)
    run = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, base + ["--damage-told", "estimate"])
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(app, [a if a != "2" else "3" for a in base])
    assert resumed.exit_code == 0, resumed.output
    assert len(told) == 3 and json.loads((run / "config.json").read_text())["damage_told"] == "estimate"
    with torch.no_grad():
        for lr_batch, damage in told:
            assert torch.allclose(damage, estimator(lr_batch).clamp_min(0.0), atol=1e-6)
    other = runner.invoke(app, [a if a != "2" else "4" for a in base] + ["--damage-told", "truth"])
    assert other.exit_code == 2 and "started with --damage-told estimate" in other.output, other.output

    told.clear()  # the default: the drawn damage, jittered; not the estimator's reading
    truth_run = runner.invoke(app, [a if a != str(run) else str(tmp_path / "truth") for a in base])
    assert truth_run.exit_code == 0, truth_run.output
    assert json.loads((tmp_path / "truth" / "config.json").read_text())["damage_told"] == "truth"
    with torch.no_grad():
        assert not any(torch.allclose(d, estimator(lr).clamp_min(0.0), atol=1e-3) for lr, d in told)
    plain = runner.invoke(app, ["train", "--out", str(tmp_path / "plain"), "--data", str(pool), "--val", "",
                                "--steps", "1", "--damage-told", "estimate"])
    assert plain.exit_code == 2 and "not damage-conditioned" in plain.output, plain.output
    bad = runner.invoke(app, base + ["--damage-told", "guess", "--restart"])
    assert bad.exit_code == 2 and "--damage-told guess: choose truth, estimate or context" in bad.output, bad.output


def test_damage_told_context_tells_the_reading_of_each_patchs_region(tmp_path: Path, pool: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`--damage-told context`: each patch is cut from a 128-px LR region degraded whole, and the network is
    told what its frozen estimator reads from that region (as run time reads 128-px crops of a whole image),
    not from the patch; recorded in the run."""
    from ribsr_cli.engine.damage import ESTIMATE_CROP
    from ribsr_cli.training import trainer

    regions: list[tuple[torch.Tensor, torch.Tensor]] = []
    told: list[torch.Tensor] = []
    real_batch, real_step = trainer.make_batch_in_context, trainer._optimise

    def recording_batch(*args, **kwargs):
        lr, hr, context = real_batch(*args, **kwargs)
        regions.append((lr.clone(), context.clone()))
        return lr, hr, context

    def recording_step(net, model, ema, opt, cfg, step, lr_batch, hr_batch, device, autocast, damage=None):
        told.append(damage.clone())
        return real_step(net, model, ema, opt, cfg, step, lr_batch, hr_batch, device, autocast, damage)
    monkeypatch.setattr(trainer, "make_batch_in_context", recording_batch)
    monkeypatch.setattr(trainer, "_optimise", recording_step)
    estimator, base = _told_run_setup(tmp_path, pool)
    result = CliRunner().invoke(app, base + ["--damage-told", "context"])
    assert result.exit_code == 0, result.output
    assert len(told) == len(regions) == 2
    with torch.no_grad():
        for (lr, context), damage in zip(regions, told):
            assert context.shape[-2:] == (ESTIMATE_CROP, ESTIMATE_CROP) and lr.shape[-2:] == (32, 32)
            assert torch.allclose(damage, estimator(context).clamp_min(0.0), atol=1e-6)
            assert not torch.allclose(damage, estimator(lr).clamp_min(0.0), atol=1e-3)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["damage_told"] == "context"
