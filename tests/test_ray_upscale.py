"""`ribsr upscale --ray`: a folder of real photo crops on a local Ray runtime with 2 CPU workers.

The reference is the plain single-process `ribsr upscale` of the same folder with the same model. Each Ray
worker gets one of the runtime's 2 CPUs and so runs torch on one thread, as the reference run here does
(torch.set_num_threads(1)): the float summation order is the same, and outputs must be byte-identical
files (pixels equal, not merely within a rounding step; metadata byte-equal). The folder holds EXIF with a
rotation, ICC and XMP (JPEG), an ICC PNG, a 16-bit PNG, an RGBA PNG, and one truncated JPEG.

Skipped without Ray (`pip install "ribsr[ray]"`), except the test of that very message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from ribsr_cli.cli import app
from ribsr_cli.engine import build_model
from ribsr_cli.engine.checkpoint import save_model
from ribsr_cli.imaging.io import read_image, write_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="ribsr-ray"/>'
       b"</rdf:RDF></x:xmpmeta>")
GOOD = ("camera.jpg", "cat_icc.png", "rocket16.png", "astronaut_alpha.png")
CORRUPT = "truncated.jpg"


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[object]:
    """One local Ray runtime with 2 CPUs for the whole module (starting one takes seconds)."""
    ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "ribsr[ray]"')
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-init ribsr-s-x2 checkpoint: a large, context-sensitive residual shows any tile or
    thread difference between the two runs."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "rand-s-x2.safetensors"
    save_model(build_model("ribsr-s-x2"), path)
    return path


def _crop(name: str, box: tuple[int, int, int, int], mode: str = "RGB") -> Image.Image:
    with Image.open(EXAMPLES / name) as im:
        return im.convert(mode).crop(box)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small crops of the example photos, with the metadata and sample formats a photo folder carries."""
    folder = tmp_path_factory.mktemp("photos")
    with Image.open(EXAMPLES / "astronaut.png") as im:
        icc = im.info["icc_profile"]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    exif[0x010F] = "RibsrRayCam"
    _crop("coffee.png", (200, 150, 264, 198)).save(folder / GOOD[0], quality=95, exif=exif.tobytes(),
                                                  icc_profile=icc, dpi=(300, 300), xmp=XMP)
    _crop("chelsea.png", (150, 60, 214, 108)).save(folder / GOOD[1], icc_profile=icc)
    rng = np.random.default_rng(0)
    deep = np.asarray(_crop("rocket.jpg", (300, 150, 364, 198)), dtype=np.uint16) * 256
    write_image(folder / GOOD[2], deep + rng.integers(0, 256, deep.shape, dtype=np.uint16), fmt="PNG", bit_depth=16)
    rgba = np.asarray(_crop("astronaut.png", (180, 80, 244, 128), "RGBA")).copy()
    rgba[..., 3] = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # 0 (hidden) to opaque
    Image.fromarray(rgba).save(folder / GOOD[3])
    (folder / CORRUPT).write_bytes((EXAMPLES / "rocket.jpg").read_bytes()[:600])
    return folder


def upscale(model: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(app, ["upscale", *map(str, args), "-m", str(model), "--tile", "32", "-q"])


@pytest.fixture(scope="module")
def reference(photos: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The plain single-process run, on one thread as each Ray worker here: (output folder, JSON report)."""
    out = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = upscale(model_path, photos, "-o", out / "out", "--json", out / "report.json")
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 1, result.output  # the truncated file fails, the rest are written
    return out / "out", json.loads((out / "report.json").read_text())


def _rows(report: dict) -> dict[str, dict]:
    return {Path(row["input"]).name: row for row in report["files"]}


def _assert_same_outputs(out: Path, ref: Path) -> None:
    names = sorted(p.name for p in ref.iterdir())
    assert len(names) == len(GOOD)
    assert sorted(p.name for p in out.iterdir()) == names  # no partial, temporary or extra file
    for name in names:
        mine, theirs = read_image(out / name), read_image(ref / name)
        assert mine.bit_depth == theirs.bit_depth
        assert np.array_equal(mine.pixels, theirs.pixels), name
        assert (mine.alpha is None) == (theirs.alpha is None) and (
            mine.alpha is None or np.array_equal(mine.alpha, theirs.alpha)), name
        assert (mine.exif, mine.icc_profile, mine.xmp, mine.dpi) == (theirs.exif, theirs.icc_profile,
                                                                     theirs.xmp, theirs.dpi), name
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_ray_outputs_equal_the_single_process_run(ray_runtime, photos: Path, model_path: Path,
                                                  reference: tuple[Path, dict], tmp_path: Path) -> None:
    ref_out, ref_report = reference
    result = upscale(model_path, photos, "-o", tmp_path / "out", "--ray", "local", "--workers", "2",
                     "--json", tmp_path / "report.json")
    assert result.exit_code == 1, result.output
    _assert_same_outputs(tmp_path / "out", ref_out)
    assert read_image(tmp_path / "out" / "rocket16_x2.png").bit_depth == 16
    assert read_image(tmp_path / "out" / "camera_x2.jpg").exif is not None
    report = json.loads((tmp_path / "report.json").read_text())
    rows, ref_rows = _rows(report), _rows(ref_report)
    assert rows.keys() == ref_rows.keys() == set(GOOD) | {CORRUPT}
    for name, row in rows.items():  # the same row, field by field, as the local --json report
        same = ("status", "error", "input_size", "output_size", "warnings", "kernels", "tile")
        assert {k: row[k] for k in same} == {k: ref_rows[name][k] for k in same}, name
    assert rows[CORRUPT]["status"] == "failed" and rows[CORRUPT]["error"]
    assert report["totals"]["done"] == len(GOOD) and report["totals"]["failed"] == 1
    assert report["model_sha256"] == ref_report["model_sha256"]


def test_a_worker_killed_mid_write_loses_no_file_and_leaves_no_partial_one(
        ray_runtime, photos: Path, model_path: Path, reference: tuple[Path, dict], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ribsr_cli.distributed.ray_upscale import CRASH_ENV

    marker = tmp_path / "crashed-once"
    # the worker writing the 16-bit PNG dies after filling its temporary file, before the rename
    monkeypatch.setenv(CRASH_ENV, f"{GOOD[2]}|{marker}")
    result = upscale(model_path, photos, "-o", tmp_path / "out", "--ray", "local", "--workers", "2",
                     "--json", tmp_path / "report.json")
    assert marker.exists(), "the hook never fired: the test proved nothing"
    assert result.exit_code == 1, result.output
    _assert_same_outputs(tmp_path / "out", reference[0])  # retried whole; no .tmp left beside it
    rows = _rows(json.loads((tmp_path / "report.json").read_text()))
    assert rows[GOOD[2]]["status"] == "done" and rows[CORRUPT]["status"] == "failed"


def test_a_rerun_skips_every_finished_output(ray_runtime, photos: Path, model_path: Path, tmp_path: Path) -> None:
    first = upscale(model_path, photos, "-o", tmp_path / "out", "--ray", "local", "--workers", "2")
    assert first.exit_code == 1, first.output
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = upscale(model_path, photos, "-o", tmp_path / "out", "--ray", "local", "--workers", "2",
                    "--json", tmp_path / "again.json")
    assert again.exit_code == 1, again.output  # the corrupt file fails again; nothing else is touched
    rows = _rows(json.loads((tmp_path / "again.json").read_text()))
    assert {name: rows[name]["status"] for name in GOOD} == dict.fromkeys(GOOD, "skipped")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps


def test_without_ray_the_option_is_one_usage_line_naming_the_extra(photos: Path, model_path: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, installed or not
    result = upscale(model_path, photos, "-o", tmp_path / "out", "--ray", "local")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "ribsr[ray]"' in lines[0], result.output
    assert not (tmp_path / "out").exists()
