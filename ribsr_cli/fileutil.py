"""Files that are whole or absent, and files named by their content: the two file-level habits ribsr keeps.

Why this module exists: a photo, a stored model, the training pool or a downloaded photo that a crash, a
full disk or Ctrl-C interrupts must never sit half-written under its real name, where the next run would
take it for a good one; and every writer used to carry its own copy of the temporary-file dance. Here it
is once. The bytes go to a hidden temporary file beside the target (same folder, so same file system and
an atomic rename), are fsynced, and `os.replace` puts them in place; the folder is fsynced too, so the
rename itself survives a power cut. Any exception, KeyboardInterrupt included, removes the temporary file
and leaves whatever the target held before untouched.

`sha256_file` lives here for the same reason: one way to identify a file by its bytes (model cards, the
shipped manifest, the training-photo manifest all record it).

Standard library only, so every layer may use it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside `target`, for writers that create the file themselves (safetensors,
    torch.save, a tool writing to a path). On a clean exit the file is fsynced and renamed onto `target`;
    on any exception it is removed and `target` is left as it was.

    The name is `.TARGETNAME.<random>.tmp`: hidden from folder scans, unique per writer (two processes
    writing the same target never share one), and recognisable, so that `upscale --ray` can sweep up what
    a killed worker left (distributed/ray_upscale.py globs for it)."""
    target = Path(target)
    temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[BinaryIO]:
    """An open binary file that becomes `target` when the block ends cleanly (see `atomic_path`).

    The file is opened read-write (`x+b`): some encoders (TIFF) seek back and patch their own output.
    """
    with atomic_path(target) as temp, open(temp, "x+b") as f:
        yield f


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Replace `target` with `data`, all or nothing."""
    with atomic_file(target) as f:
        f.write(data)


def atomic_write_text(target: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace `target` with `text`, all or nothing."""
    atomic_write_bytes(target, text.encode(encoding))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not every platform lets a folder be opened or fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:  # mtime/size key the cache on file changes
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (cached while the file's size and modification time are unchanged)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
