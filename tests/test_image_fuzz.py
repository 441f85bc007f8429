"""Bounded fuzzing of read_image: mutated real photos either decode or raise ImageReadError, quickly.

Each source format gets the same seeded mutations (byte flips, truncation, junk
insertion, header damage, PNG mutations with repaired CRCs so they reach the
decoders). Every case runs under a wall-clock alarm, so a hang fails the test
instead of stalling CI. About 330 cases; a few seconds on one core.
"""

from __future__ import annotations

import io
import signal
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
from PIL import Image

from ribsr_cli.imaging.io import ImageReadError, LoadedImage, read_image, write_image

CASES_PER_SOURCE = 30
SECONDS_PER_CASE = 5.0
MAX_PIXELS = 100_000  # sources are 48x40; mutated headers that claim more are refused early

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")


class CaseTimeout(BaseException):
    """BaseException, so read_image's error mapping cannot turn a hang into an ImageReadError."""


@pytest.fixture(scope="module")
def small_photo(benchmarks_dir: Path) -> np.ndarray:
    with Image.open(benchmarks_dir / "Set14" / "HR" / "monarch.png") as im:
        return np.asarray(im.convert("RGB").crop((300, 200, 348, 240)))


def _pillow_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _ribsr_bytes(tmp: Path, pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, depth: int) -> bytes:
    path = tmp / f"src.{fmt.lower()}"
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(path, pixels, alpha, fmt=fmt, bit_depth=depth, exif=exif.tobytes(), dpi=(300, 300))
    return path.read_bytes()


def _sources(photo: np.ndarray, tmp: Path) -> dict[str, bytes]:
    rgb = Image.fromarray(photo)
    alpha = np.linspace(0, 255, photo.shape[0] * photo.shape[1]).reshape(photo.shape[:2]).astype(np.uint8)
    deep = photo.astype(np.uint16) * 257 + 3
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff16 = io.BytesIO()
    tifffile.imwrite(tiff16, deep, photometric="rgb", compression="zlib")
    frames = [rgb.quantize(32), Image.fromarray(255 - photo).quantize(32)]
    palette = rgb.quantize(16)
    return {
        "png8": _pillow_bytes(rgb, "PNG"),
        "png_palette_trns": _pillow_bytes(palette, "PNG", transparency=0),
        "png16_rgb": _ribsr_bytes(tmp, deep, None, "PNG", 16),
        "png16_grey_alpha": _ribsr_bytes(tmp, deep[..., :1], deep[..., 1], "PNG", 16),
        "jpeg_exif": _pillow_bytes(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        "tiff8_lzw": _pillow_bytes(rgb, "TIFF", compression="tiff_lzw"),
        "tiff16": tiff16.getvalue(),
        "webp_alpha": _pillow_bytes(Image.fromarray(np.dstack([photo, alpha])), "WEBP", quality=80),
        "bmp": _pillow_bytes(rgb, "BMP"),
        "gif_animated": _gif_bytes(frames),
        "tiff8_ribsr_exif": _ribsr_bytes(tmp, photo, alpha, "TIFF", 8),
    }


def _gif_bytes(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


# --- mutations -----------------------------------------------------------------------------


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for at in rng.integers(0, len(out), rng.integers(1, 9)):
        out[at] = int(rng.integers(0, 256))
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _insert_junk(data: bytes, rng: np.random.Generator) -> bytes:
    at = int(rng.integers(0, len(data)))
    return data[:at] + rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes() + data[at:]


def _damage_header(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for at in rng.integers(0, min(64, len(out)), rng.integers(1, 5)):
        out[at] = int(rng.integers(0, 256))
    return bytes(out)


def _huge_numbers(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite a 4-byte word near the start with an extreme value (sizes, offsets, counts)."""
    out = bytearray(data)
    at = int(rng.integers(0, max(1, min(200, len(out) - 4))))
    out[at:at + 4] = struct.pack(">I", int(rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 65536, 100_000])))
    return bytes(out)


def _repeat_slice(data: bytes, rng: np.random.Generator) -> bytes:
    start = int(rng.integers(0, len(data)))
    stop = min(len(data), start + int(rng.integers(1, 256)))
    return data[:stop] + data[start:stop] * int(rng.integers(1, 4)) + data[stop:]


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC so a mutation gets past CRC checks into the decoders."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, at = bytearray(data), 8
    while at + 8 <= len(out):
        (length,) = struct.unpack_from(">I", out, at)
        end = at + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(bytes(out[at + 4:end])))
        at = end + 4
    return bytes(out)


MUTATIONS: list[Callable[[bytes, np.random.Generator], bytes]] = [
    _flip, _truncate, _insert_junk, _damage_header, _huge_numbers, _repeat_slice,
]


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    mutation = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
    mutated = mutation(data, rng)
    if rng.random() < 0.5:
        return _fix_png_crcs(mutated), mutation.__name__ + "+crc"
    return mutated, mutation.__name__


# --- the fuzz loop ---------------------------------------------------------------------------


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTimeout()


def _read_bounded(path: Path) -> LoadedImage | ImageReadError:
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)
    try:
        return read_image(path, max_pixels=MAX_PIXELS)
    except ImageReadError as exc:
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_loaded(img: LoadedImage, label: str) -> None:
    pixels = img.pixels
    assert isinstance(pixels, np.ndarray) and pixels.ndim == 3 and pixels.shape[2] in (1, 3), label
    assert pixels.dtype == (np.uint16 if img.bit_depth == 16 else np.uint8), label
    assert pixels.shape[0] * pixels.shape[1] <= MAX_PIXELS, label
    assert img.alpha is None or (img.alpha.shape == pixels.shape[:2] and img.alpha.dtype == pixels.dtype), label
    assert all(isinstance(w, str) for w in img.warnings), label


SOURCE_NAMES = ["png8", "png_palette_trns", "png16_rgb", "png16_grey_alpha", "jpeg_exif", "tiff8_lzw", "tiff16",
                "webp_alpha", "bmp", "gif_animated", "tiff8_ribsr_exif"]


@pytest.mark.parametrize("source", SOURCE_NAMES)
def test_mutated_files_decode_or_fail_cleanly(tmp_path: Path, small_photo: np.ndarray, source: str) -> None:
    original = _sources(small_photo, tmp_path)[source]
    assert isinstance(_read_bounded(_write(tmp_path, "original", original)), LoadedImage)  # the seed is valid
    rng = np.random.default_rng(SOURCE_NAMES.index(source) + 1000)
    outcomes = {"decoded": 0, "refused": 0}
    for case in range(CASES_PER_SOURCE):
        data, how = _mutate(original, rng)
        label = f"{source} case {case} ({how}, {len(data)} bytes)"
        try:
            result = _read_bounded(_write(tmp_path, f"case{case}", data))
        except CaseTimeout:
            pytest.fail(f"{label}: read_image took longer than {SECONDS_PER_CASE} s")
        except Exception as exc:  # anything but ImageReadError escaping is the bug we hunt
            pytest.fail(f"{label}: {type(exc).__name__} escaped read_image: {exc}")
        if isinstance(result, ImageReadError):
            text = str(result)
            assert "\n" not in text and text.startswith(str(tmp_path)), label
            outcomes["refused"] += 1
        else:
            _check_loaded(result, label)
            outcomes["decoded"] += 1
    assert sum(outcomes.values()) == CASES_PER_SOURCE


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path
