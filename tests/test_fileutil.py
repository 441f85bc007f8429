"""Atomic writes (ribsr_cli.fileutil) on the real file system: a writer that dies leaves the old file whole and no
temporary file; and the writers that use them (checkpoints, the model store, the training pool) keep that promise."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES
from ribsr_cli import fileutil
from ribsr_cli.fileutil import atomic_file, atomic_path, atomic_write_bytes, atomic_write_text, sha256_file

OLD = b"the previous, complete result\n"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "result.bin"
    path.write_bytes(OLD)
    return path


def _everything(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes_replace_the_file_and_leave_nothing_else(target: Path) -> None:
    photo = (EXAMPLES / "rocket.jpg").read_bytes()
    atomic_write_bytes(target, photo)
    assert target.read_bytes() == photo and _everything(target.parent) == ["result.bin"]
    atomic_write_text(target, "naïve text\n")
    assert target.read_text(encoding="utf-8") == "naïve text\n" and _everything(target.parent) == ["result.bin"]
    fresh = target.parent / "new.bin"
    atomic_write_bytes(fresh, b"")
    assert fresh.read_bytes() == b""


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_writer_dying_midway_leaves_the_old_file_and_no_temporary(target: Path, error: BaseException) -> None:
    photo = (EXAMPLES / "coffee.png").read_bytes()
    seen: list[Path] = []
    with pytest.raises(type(error)):
        with atomic_file(target) as f:
            f.write(photo[: len(photo) // 2])  # half a photo is on disk when it dies
            f.flush()
            seen.append(Path(f.name))
            raise error
    assert seen[0].parent == target.parent and seen[0].name.startswith(".")  # it was beside the target, hidden
    assert target.read_bytes() == OLD and _everything(target.parent) == ["result.bin"]


@pytest.mark.parametrize("error", [ValueError("encoder failed"), KeyboardInterrupt()])
def test_a_path_writer_dying_midway_leaves_the_old_file_and_no_temporary(target: Path, error: BaseException) -> None:
    """Writers that open the file themselves (safetensors, torch.save, a tool): the same promise."""
    with pytest.raises(type(error)):
        with atomic_path(target) as temp:
            Image.open(EXAMPLES / "chelsea.png").save(temp, format="PNG")
            assert temp.is_file() and not temp.samefile(target)
            raise error
    assert target.read_bytes() == OLD and _everything(target.parent) == ["result.bin"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileutil.os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == OLD and _everything(target.parent) == ["result.bin"]


def test_sha256_file_matches_hashlib_and_follows_changes(target: Path) -> None:
    assert sha256_file(target) == hashlib.sha256(OLD).hexdigest()
    photo = (EXAMPLES / "astronaut.png").read_bytes()
    atomic_write_bytes(target, photo)  # same path, new content: the cache must not answer the old digest
    assert sha256_file(target) == hashlib.sha256(photo).hexdigest()


# ---- the writers that use it ---------------------------------------------------------------------------------------


def test_save_model_keeps_the_old_checkpoint_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    from ribsr_cli.engine import build_model
    from ribsr_cli.engine.checkpoint import load_model, save_model

    path = tmp_path / "model.safetensors"
    save_model(build_model("ribsr-s-x2"), path)
    before = path.read_bytes()
    real = safetensors.torch.save_file

    def dies_after_writing(state, filename, metadata=None):
        real(state, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:1000])  # a torn write, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_after_writing)
    with pytest.raises(KeyboardInterrupt):
        save_model(build_model("ribsr-s-x4"), path)
    assert path.read_bytes() == before and _everything(tmp_path) == ["model.safetensors"]
    assert load_model(path).scale == 2


def test_prepare_interrupted_keeps_the_old_pool_and_leaves_no_temporary(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import ribsr_cli.training.prepare as prepare_module

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        (photos / name).write_bytes((EXAMPLES / name).read_bytes())
    out = tmp_path / "pool"
    first = prepare_module.prepare(photos, out, 4, [], log=lambda m: None)
    assert len(first.images) == 3
    before = {name: (out / name).read_bytes() for name in _everything(out)}
    real, calls = prepare_module.load_photo, []

    def interrupted_on_the_second(path: Path, downscale: int = 2) -> np.ndarray:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, downscale)

    monkeypatch.setattr(prepare_module, "load_photo", interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(photos, out, 2, [], log=lambda m: None)
    assert {name: (out / name).read_bytes() for name in _everything(out)} == before
