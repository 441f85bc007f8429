"""Every folder scan skips hidden files: a macOS `._photo.png` resource fork (not an image at all) beside
real photos must not become an input of upscale, eval, `data prepare` or the leak check.

One rule (`imaging.io.is_scanned_image`) serves all four; each scan is exercised here on a folder holding two
real photos and such a fork.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ribsr_cli.evaluation import discover_dataset
from ribsr_cli.imaging.io import is_scanned_image
from ribsr_cli.training.leakcheck import benchmark_files
from ribsr_cli.training.prepare import find_photos
from ribsr_cli.upscaling import collect_inputs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(EXAMPLES / name, photos / name)
    # what macOS writes beside a copied file on a non-Apple file system: AppleDouble bytes, not a PNG
    (photos / "._chelsea.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    return photos


def test_the_rule() -> None:
    assert is_scanned_image("a/b/Photo.JPG") and is_scanned_image("x.tif")
    assert not is_scanned_image("a/._Photo.jpg") and not is_scanned_image(".x.png.abc123.tmp")
    assert not is_scanned_image("notes.txt")


def test_upscale_eval_prepare_and_leakcheck_skip_the_fork(folder: Path, tmp_path: Path) -> None:
    expected = ["chelsea.png", "coffee.png"]
    assert sorted(src.name for src, _ in collect_inputs([str(folder)], False, tmp_path / "out")) == expected
    assert [p.name for p in discover_dataset(folder).hr_files] == expected
    assert [p.name for p in find_photos(folder)] == expected
    assert [p.name for p in benchmark_files(folder)] == expected
