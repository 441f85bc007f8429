"""Dataset discovery, the scoring loop, published bicubic numbers, and the `ribsr eval` command."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ribsr_cli.cli import app
from ribsr_cli.evaluation import (
    BICUBIC,
    EvalError,
    bicubic_upscaler,
    check_pairs,
    discover_dataset,
    evaluate,
    published_bicubic,
)
from ribsr_cli.imaging.resize import bicubic_degrade

runner = CliRunner()


def _make_set(root: Path, name: str = "Tiny", *, official_lr: tuple[int, ...] = (), n: int = 3, seed: int = 0) -> Path:
    """HR images (last one grayscale), sizes not multiples of 2 or 3, and optionally official LR files."""
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / "HR").mkdir(parents=True)
    for i in range(n):
        base = rng.integers(0, 256, (8, 8, 3)).astype(np.float64)
        img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((37, 41), Image.BICUBIC))  # smooth-ish
        hr = img[..., 0] if i == n - 1 else img
        Image.fromarray(hr).save(folder / "HR" / f"img{i}.png")
        for s in official_lr:
            (folder / "LR_bicubic" / f"X{s}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(bicubic_degrade(hr, s)).save(folder / "LR_bicubic" / f"X{s}" / f"img{i}x{s}.png")
    return folder


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# ---- discovery -------------------------------------------------------------------------


def test_discover_layouts(tmp_path):
    full = _make_set(tmp_path, "Set5", official_lr=(2,))
    ds = discover_dataset(full)
    assert ds.name == "Set5" and len(ds.hr_files) == 3 and ds.lr_root == full / "LR_bicubic"
    assert ds.official_lr(ds.hr_files[0], 2) == full / "LR_bicubic" / "X2" / "img0x2.png"
    assert ds.official_lr(ds.hr_files[0], 3) is None
    assert discover_dataset(full / "HR").name == "Set5"  # pointing at HR/ itself
    plain = tmp_path / "photos"
    plain.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain / "a.png")
    (plain / "notes.txt").write_text("not an image")
    ds = discover_dataset(plain)
    assert ds.name == "photos" and [p.name for p in ds.hr_files] == ["a.png"] and ds.lr_root is None
    with pytest.raises(EvalError, match="no such folder"):
        discover_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="no images found"):
        discover_dataset(tmp_path / "empty")


def test_published_table_and_aliases():
    assert published_bicubic("Set5", 2) == 33.66
    assert published_bicubic("set14", 4) == 26.00
    assert published_bicubic("BSDS100", 3) == published_bicubic("BSD100", 3) == published_bicubic("B100", 3) == 27.21
    assert published_bicubic("Urban100", 4) == 23.14 and published_bicubic("Manga109", 2) == 30.80
    assert published_bicubic("mine", 2) is None and published_bicubic("Set5", 8) is None


# ---- scoring loop ------------------------------------------------------------------------


def test_evaluate_hooks_methods_and_keeps_grey(tmp_path):
    ds = discover_dataset(_make_set(tmp_path))
    seen = []

    def spy(lr: np.ndarray, scale: int) -> np.ndarray:
        seen.append((lr.shape, scale))
        return bicubic_upscaler(lr, scale)

    def blocky(lr: np.ndarray, scale: int) -> np.ndarray:
        return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)

    report = evaluate([ds], [2, 3], {"spy": spy, "blocky": blocky})
    assert [(r.scale, r.method) for r in report.results] == [(s, m) for s in (2, 3) for m in (BICUBIC, "spy", "blocky")]
    assert seen[0] == ((20, 18, 3), 2) and seen[2] == ((20, 18), 2)  # mod-cropped 40x36 / 2; grey stays 2-D
    assert seen[3] == ((13, 12, 3), 3)
    bic, same, worse = report.results[:3]
    assert bic.images == 3 and [s.name for s in bic.per_image] == ["img0", "img1", "img2"]
    assert same.psnr == bic.psnr and same.ssim == bic.ssim
    assert worse.psnr < bic.psnr
    assert all(r.seconds >= 0 for r in report.results)
    assert report.lr_files_used == {"Tiny x2": 0, "Tiny x3": 0}
    record = bic.as_dict()
    assert set(record) == {"dataset", "scale", "method", "psnr_y", "ssim_y", "images", "seconds", "per_image"}
    assert set(record["per_image"][0]) == {"name", "psnr_y", "ssim_y"}


def test_official_lr_is_used_unless_degrading(tmp_path):
    folder = _make_set(tmp_path, official_lr=(2,))
    ds = discover_dataset(folder)
    first = evaluate([ds], [2]).results[0]
    assert evaluate([ds], [2], use_official_lr=False).results[0].psnr == first.psnr  # identical LR either way
    lr_file = folder / "LR_bicubic" / "X2" / "img0x2.png"
    Image.fromarray(np.zeros((20, 18, 3), np.uint8)).save(lr_file)
    report = evaluate([ds], [2])
    assert report.lr_files_used == {"Tiny x2": 3}
    assert report.results[0].per_image[0].psnr < first.per_image[0].psnr - 5
    assert evaluate([ds], [2], use_official_lr=False).results[0].psnr == first.psnr


def test_mismatched_lr_size_names_the_file(tmp_path):
    folder = _make_set(tmp_path, official_lr=(2,))
    bad = folder / "LR_bicubic" / "X2" / "img1x2.png"
    Image.fromarray(np.zeros((21, 18, 3), np.uint8)).save(bad)
    ds = discover_dataset(folder)
    with pytest.raises(EvalError, match=r"img1x2\.png: LR is 18x21.*needs 18x20"):
        check_pairs(ds, [2])
    with pytest.raises(EvalError, match="mismatched HR/LR pair"):
        evaluate([ds], [2])


def test_published_mismatch_warns(tmp_path):
    ds = discover_dataset(_make_set(tmp_path, "Set5"))
    report = evaluate([ds], [2])
    assert len(report.warnings) == 1 and "published 33.66" in report.warnings[0]
    assert evaluate([ds], [2], test_y=False).warnings == []  # other protocol: no comparison


@pytest.mark.parametrize("degrade", [False, True])
def test_set5_reproduces_published_bicubic(benchmarks_dir, degrade):
    report = evaluate([discover_dataset(benchmarks_dir / "Set5")], [2, 3, 4], use_official_lr=not degrade)
    assert report.warnings == []
    assert report.lr_files_used["Set5 x2"] == (0 if degrade else 5)
    scores = {r.scale: r for r in report.results}
    for scale, ref in {2: 33.66, 3: 30.39, 4: 28.42}.items():
        assert abs(scores[scale].psnr - ref) <= 0.02
    assert abs(scores[2].ssim - 0.9299) <= 0.002


def test_set14_x2_reproduces_published_bicubic(benchmarks_dir):
    result = evaluate([discover_dataset(benchmarks_dir / "Set14")], [2]).results[0]
    assert abs(result.psnr - 30.24) <= 0.02 and abs(result.ssim - 0.8688) <= 0.002


# ---- the command ------------------------------------------------------------------------------


def test_cli_json_csv_and_images(tmp_path):
    folder = _make_set(tmp_path, official_lr=(2,))
    out_json, out_csv, saved = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "sr"
    result = runner.invoke(app, ["eval", str(folder), "-s", "2,3", "--no-model", "--json", str(out_json),
                                 "--csv", str(out_csv), "--save-images", str(saved), "--per-image"])
    assert result.exit_code == 0, result.output
    assert "PSNR-Y" in result.stdout and "img2" in result.stdout
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"ribsr_version", "protocol", "results"}
    from ribsr_cli import __version__

    assert doc["ribsr_version"] == __version__
    protocol = doc["protocol"]
    assert protocol["crop_border"] == "scale" and protocol["channel"] == "Y" and protocol["scales"] == [2, 3]
    assert protocol["lr_official_files"] == {"Tiny x2": 3, "Tiny x3": 0}
    assert protocol["ssim"]["sigma"] == 1.5 and protocol["methods"] == ["bicubic"]
    keys = [(r["dataset"], r["scale"], r["method"]) for r in doc["results"]]
    assert keys == [("Tiny", 2, "bicubic"), ("Tiny", 3, "bicubic")]
    for r in doc["results"]:
        assert set(r) == {"dataset", "scale", "method", "psnr_y", "ssim_y", "images", "seconds", "per_image"}
        assert r["images"] == 3 and len(r["per_image"]) == 3
        assert set(r["per_image"][0]) == {"name", "psnr_y", "ssim_y"}
        assert r["psnr_y"] == pytest.approx(np.mean([p["psnr_y"] for p in r["per_image"]]), abs=1e-5)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 * (3 + 1) and rows[3]["image"] == "(mean)"
    sr = np.asarray(Image.open(saved / "Tiny" / "x3" / "bicubic" / "img2.png"))
    assert sr.shape == (39, 36)  # grey stays grey


def test_cli_degrade_crop_border_and_rgb_in_protocol(tmp_path):
    folder = _make_set(tmp_path, official_lr=(2,))
    out_json = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(folder), "--no-model", "--ignore-lr", "--rgb",
                                 "--crop-border", "0", "-q", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    protocol = json.loads(out_json.read_text())["protocol"]
    assert protocol["crop_border"] == 0 and protocol["channel"].startswith("RGB")
    assert protocol["lr_official_files"] == {"Tiny x2": 0} and "degrade" in protocol["lr_source"]


def test_cli_user_errors_are_one_line(tmp_path):
    folder = _make_set(tmp_path, official_lr=(2,))
    (tmp_path / "empty").mkdir()
    _one_line_error(runner.invoke(app, ["eval", str(tmp_path / "empty"), "--no-model"]), "no images found")
    missing = runner.invoke(app, ["eval", str(tmp_path / "nope"), "--no-model"])
    _one_line_error(missing, "nope", "no such folder")
    for bad in ("0", "1", "x", "2.5", "2,,3"):
        _one_line_error(runner.invoke(app, ["eval", str(folder), "-s", bad, "--no-model"]), "invalid scale")
    _one_line_error(runner.invoke(app, ["eval", str(folder), "--baseline", "lanczos"]), "unknown baseline")
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(folder / "LR_bicubic" / "X2" / "img0x2.png")
    mismatched = runner.invoke(app, ["eval", str(folder), "--no-model"])
    _one_line_error(mismatched, "img0x2.png", "mismatched HR/LR")


class _BicubicUpscaler:
    """Stands in for the engine's Upscaler: its interface (name, call, report, provenance), bicubic's pixels."""

    def __init__(self, scale: int) -> None:
        from ribsr_cli.engine.runner import RunReport

        self.name, self.report = f"fake-x{scale}", RunReport(precision="fp32")

    def __call__(self, lr, scale):
        return bicubic_upscaler(lr, scale)

    def provenance(self) -> dict:
        return {"sha256": None, "source": None}


def test_cli_model_hook(tmp_path, monkeypatch):
    from ribsr_cli.engine import runner as engine_runner

    calls = []

    def fake_load_upscaler(model, scale, options, **_):
        calls.append((model, scale, options.tile, options.tta, options.device, options.precision))
        return _BicubicUpscaler(scale)

    monkeypatch.setattr(engine_runner, "load_upscaler", fake_load_upscaler)
    folder = _make_set(tmp_path)
    out_json = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(folder), "-s", "2", "-s", "3", "-m", "my.pth", "--tile", "64", "--tta",
                                 "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert calls == [("my.pth", 2, 64, True, "auto", "fp32"), ("my.pth", 3, 64, True, "auto", "fp32")]
    assert "+0.000" in result.stdout  # delta vs bicubic
    doc = json.loads(out_json.read_text())
    assert [r["method"] for r in doc["results"]] == ["bicubic", "fake-x2", "bicubic", "fake-x3"]
    assert doc["protocol"]["tta"] is True and doc["protocol"]["tile"] == 64
    calls.clear()
    assert runner.invoke(app, ["eval", str(folder), "-q"]).exit_code == 0  # no -m, no --no-model: shipped model
    assert calls == [(None, 2, 0, False, "auto", "fp32")]  # scores: fp32 and whole images unless asked

    def no_weights(model, scale, options, **_):
        raise ValueError(f"no shipped model for x{scale}")

    monkeypatch.setattr(engine_runner, "load_upscaler", no_weights)
    _one_line_error(runner.invoke(app, ["eval", str(folder)]), "no shipped model for x2", "--no-model")


def test_cli_without_engine(tmp_path, monkeypatch):
    folder = _make_set(tmp_path)
    monkeypatch.setitem(sys.modules, "ribsr_cli.engine.runner", None)  # import now fails
    _one_line_error(runner.invoke(app, ["eval", str(folder)]), "unavailable", "--no-model")
    assert runner.invoke(app, ["eval", str(folder), "--no-model", "-q"]).exit_code == 0
