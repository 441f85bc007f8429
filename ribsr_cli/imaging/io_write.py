"""Writing results atomically, at the requested bit depth, with the source's metadata.

The file appears under its name complete or not at all (``ribsr_cli.fileutil.atomic_file``:
a hidden temporary file beside the target, fsynced, then ``os.replace``d). 16-bit PNG is
encoded here (numpy filtering + zlib, with iCCP/pHYs/eXIf/iTXt chunks) because
Pillow cannot write 16-bit colour and pypng cannot write those chunks; 16-bit TIFF
goes through tifffile. Everything else is Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, PngImagePlugin

from ribsr_cli.errors import RibsrError
from ribsr_cli.fileutil import atomic_file
from ribsr_cli.imaging import metadata as meta

WRITE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
# Other spellings of the formats (any case), the one list: the writer, `keep` and `upscale --format` use it.
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
_MAX_SIDE = {"JPEG": 65_535, "WEBP": 16_383}
_EIGHT_BIT_ONLY = ("JPEG", "WEBP", "BMP")
_NO_ALPHA = ("JPEG", "BMP")
_APP1_EXIF_MAX = 65_533  # JPEG marker payload limit, "Exif\0\0" included
_APP1_XMP_MAX = 65_504  # same limit less the 29-byte XMP namespace header
_PNG_BLOCK_BYTES = 1 << 22  # raw bytes filtered at once; bounds the encoder's memory
_IDAT_SIZE = 1 << 20


class ImageWriteError(RibsrError, OSError):
    """An output could not be written; str() is one line, ``<path>: <reason>``."""


@dataclass
class _Output:
    """Validated pixels at the output depth, plus the metadata the format can take."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    fmt: str
    quality: int
    exif: bytes | None
    xmp: bytes | None
    icc: bytes | None
    dpi: tuple[float, float] | None
    notes: list[str] = field(default_factory=list)


def write_image(path: str | Path, pixels: np.ndarray, alpha: np.ndarray | None = None, *, fmt: str,
                bit_depth: int, quality: int = 95, exif: bytes | None = None, xmp: bytes | None = None,
                icc_profile: bytes | None = None, dpi: tuple[float, float] | None = None) -> list[str]:
    """Write HxWxC (C=1/3) uint8/uint16 pixels and optional HxW alpha; return warnings.

    `dpi` is written as given (the caller scales it with the image). Raises
    ImageWriteError, leaving neither a partial output nor a temporary file.
    """
    path = Path(path)
    try:
        out = _prepare(pixels, alpha, fmt, bit_depth, quality, exif, xmp, icc_profile, dpi)
        _atomic_write(path, _ENCODERS[out.fmt], out)
    except ImageWriteError:
        raise
    except MemoryError:
        raise ImageWriteError(path, "not enough memory to encode it") from None
    except Exception as exc:  # encoder, filesystem and validation errors alike
        raise ImageWriteError(path, _describe(exc)) from None
    return out.notes


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot write it ({exc.strerror})"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def canonical_format(fmt: str) -> str:
    """Any spelling to its canonical upper-case name ('jpg' -> 'JPEG'), whether or not it can be written."""
    name = str(fmt).strip().upper()
    return FORMAT_ALIASES.get(name, name)


def normalise_format(fmt: str) -> str:
    """'png', 'jpg', 'tif' ... to the canonical names in WRITE_FORMATS."""
    name = canonical_format(fmt)
    if name not in WRITE_FORMATS:
        raise ValueError(f"cannot write format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    return name


# --- validation and adaptation to what the format can hold -----------------------------------


def _prepare(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, bit_depth: int, quality: int,
             exif: bytes | None, xmp: bytes | None, icc: bytes | None, dpi: tuple[float, float] | None) -> _Output:
    name = normalise_format(fmt)
    pixels, alpha = _validated(pixels, alpha)
    out = _Output(pixels, alpha, name, int(quality), exif or None, xmp or None, icc or None, meta.tidy_dpi(dpi) if dpi else None)
    depth = _output_depth(name, bit_depth, out.notes)
    out.pixels = _to_depth(out.pixels, depth)
    out.alpha = None if out.alpha is None else _to_depth(out.alpha, depth)
    _check_side_limits(out)
    if name in _NO_ALPHA and out.alpha is not None:
        out.pixels, out.alpha = _flatten_on_white(out.pixels, out.alpha), None
        out.notes.append(f"{name} has no alpha channel; transparent areas were flattened onto white")
    if name == "WEBP" and out.pixels.shape[2] == 1:
        out.pixels = np.repeat(out.pixels, 3, axis=2)  # WebP has no grey mode
    _fit_metadata(out)
    return out


def _validated(pixels: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or 0 in pixels.shape:
        raise ValueError(f"pixels must be HxWx1 or HxWx3 (alpha separately), got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16 (use from_float), got {pixels.dtype}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        alpha = alpha[..., 0] if alpha.ndim == 3 and alpha.shape[2] == 1 else alpha
        if alpha.shape != pixels.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match pixels {pixels.shape[:2]}")
        alpha = _to_depth(alpha, 16 if pixels.dtype == np.uint16 else 8)
    return np.ascontiguousarray(pixels), alpha


def _output_depth(fmt: str, bit_depth: int, notes: list[str]) -> int:
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt in _EIGHT_BIT_ONLY:
        notes.append(f"{fmt} holds only 8 bits per channel; 16-bit data was reduced to 8 bits")
        return 8
    return bit_depth


def _to_depth(arr: np.ndarray, depth: int) -> np.ndarray:
    """uint8 <-> uint16 by the exact 257 scale (0xAB <-> 0xABAB), rounding on the way down."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"alpha must be uint8 or uint16, got {arr.dtype}")
    if depth == 16 and arr.dtype == np.uint8:
        return arr.astype(np.uint16) * 257
    if depth == 8 and arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _flatten_on_white(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    top = float(np.iinfo(pixels.dtype).max)
    a = alpha.astype(np.float32)[..., None] / top
    mixed = pixels.astype(np.float32) * a + top * (1.0 - a)
    return np.clip(np.rint(mixed), 0, top).astype(pixels.dtype)


def _check_side_limits(out: _Output) -> None:
    limit = _MAX_SIDE.get(out.fmt)
    height, width = out.pixels.shape[:2]
    if limit and max(height, width) > limit:
        raise ValueError(f"{out.fmt} cannot hold {width}x{height} pixels (at most {limit} per side); write PNG or TIFF instead")


def _fit_metadata(out: _Output) -> None:
    """Drop, with a note, metadata the format or the pixels cannot carry."""
    if out.fmt == "BMP" and (out.exif or out.xmp or out.icc):
        out.notes.append("BMP cannot carry EXIF, XMP or an ICC profile; they were left out")
        out.exif = out.xmp = out.icc = None
    space = meta.icc_colour_space(out.icc) if out.icc else None
    wanted = "GRAY" if out.pixels.shape[2] == 1 else "RGB"
    if out.icc and space != wanted:
        out.notes.append(f"the {space or 'unreadable'} ICC profile does not fit {wanted} pixels; it was left out")
        out.icc = None
    if out.fmt == "JPEG" and out.exif and len(meta.exif_with_prefix(out.exif)) > _APP1_EXIF_MAX:
        out.notes.append("EXIF is larger than a JPEG segment holds (64 KiB); it was left out")
        out.exif = None
    if out.fmt == "JPEG" and out.xmp and len(out.xmp) > _APP1_XMP_MAX:
        out.notes.append("XMP is larger than a JPEG segment holds (64 KiB); it was left out")
        out.xmp = None


# --- atomic file replacement --------------------------------------------------------------


def _atomic_write(path: Path, encode: Callable[[BinaryIO, _Output], None], out: _Output) -> None:
    """Encode into a temporary file beside `path` and rename it into place (ribsr_cli.fileutil)."""
    folder = path.parent
    if not folder.is_dir():
        raise ImageWriteError(path, f"folder {folder} does not exist")
    if path.is_dir():
        raise ImageWriteError(path, "is a folder")
    with atomic_file(path) as f:
        encode(f, out)


# --- encoders -------------------------------------------------------------------------------


def _pillow_image(out: _Output) -> Image.Image:
    arr = out.pixels if out.pixels.shape[2] == 3 else out.pixels[..., 0]
    if out.alpha is not None:
        arr = np.dstack([out.pixels, out.alpha])
    return Image.fromarray(np.ascontiguousarray(arr))


def _common_options(out: _Output) -> dict:
    options: dict = {}
    if out.icc:
        options["icc_profile"] = out.icc
    if out.exif:
        options["exif"] = meta.exif_with_prefix(out.exif)
    if out.dpi:
        options["dpi"] = out.dpi
    return options


def _encode_png(f: BinaryIO, out: _Output) -> None:
    if out.pixels.dtype == np.uint16:
        _encode_png16(f, out)
        return
    options = _common_options(out)
    if out.xmp:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(meta.XMP_PNG_KEYWORD, out.xmp.decode("utf-8", "replace"))
        options["pnginfo"] = info
    _pillow_image(out).save(f, "PNG", compress_level=6, **options)


def _encode_jpeg(f: BinaryIO, out: _Output) -> None:
    options = _common_options(out)
    if out.dpi:
        options["dpi"] = tuple(int(round(v)) for v in out.dpi)
    if out.xmp:
        options["xmp"] = out.xmp
    _pillow_image(out).save(f, "JPEG", quality=out.quality, subsampling=0, **options)


def _encode_webp(f: BinaryIO, out: _Output) -> None:
    options = _common_options(out)
    options.pop("dpi", None)  # WebP has no resolution field
    if out.xmp:
        options["xmp"] = out.xmp
    _pillow_image(out).save(f, "WEBP", quality=out.quality, method=4, **options)


def _encode_bmp(f: BinaryIO, out: _Output) -> None:
    options = {"dpi": out.dpi} if out.dpi else {}
    _pillow_image(out).save(f, "BMP", **options)


def _encode_tiff(f: BinaryIO, out: _Output) -> None:
    """tifffile at either depth: zlib + predictor, ICC (34675), XMP (700), EXIF with its sub-IFDs.

    Pillow's compressed (libtiff) writer rejects EXIF sub-IFDs and tifffile will not
    write their pointers, so the EXIF/GPS IFDs are appended after tifffile is done.
    """
    import tifffile

    data = out.pixels if out.alpha is None else np.dstack([out.pixels, out.alpha])
    extratags = [(meta.TIFF_XMP_TAG, "B", len(out.xmp), out.xmp, True)] if out.xmp else []
    ifd0, sub_ifds = _tiff_exif_parts(out)
    extratags += [(tag, "s", 0, value, True) for tag, value in sorted(ifd0.items()) if isinstance(value, str)]
    tifffile.imwrite(
        f, data[..., 0] if data.shape[2] == 1 else data, byteorder="<",
        photometric="minisblack" if out.pixels.shape[2] == 1 else "rgb",
        extrasamples=["unassalpha"] if out.alpha is not None else None,
        compression="zlib", predictor=True, iccprofile=out.icc,
        resolution=out.dpi, resolutionunit="inch" if out.dpi else None,
        metadata=None, software=False if 0x0131 in ifd0 else "ribsr", extratags=extratags,
    )
    if sub_ifds and not meta.tiff_append_sub_ifds(f, sub_ifds):
        out.notes.append("the TIFF is too large for its EXIF exposure/GPS block; only camera/author tags were kept")


def _tiff_exif_parts(out: _Output) -> tuple[dict, dict]:
    if not out.exif:
        return {}, {}
    try:
        return meta.exif_ifd0_tags(out.exif), meta.exif_sub_ifds(out.exif)
    except Exception:
        out.notes.append("EXIF could not be parsed for TIFF; it was left out")
        return {}, {}


_ENCODERS: dict[str, Callable[[BinaryIO, _Output], None]] = {
    "PNG": _encode_png, "JPEG": _encode_jpeg, "WEBP": _encode_webp, "TIFF": _encode_tiff, "BMP": _encode_bmp,
}


# --- 16-bit PNG ------------------------------------------------------------------------------


def _encode_png16(f: BinaryIO, out: _Output) -> None:
    """Stream a 16-bit PNG in row blocks so memory stays small for huge upscales."""
    height, width, colour = out.pixels.shape
    samples = colour + (out.alpha is not None)
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[samples]
    f.write(meta.PNG_SIGNATURE)
    f.write(meta.png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)))
    f.write(meta.png_metadata_chunks(out.exif, out.xmp, out.icc, out.dpi))
    compressor, pending = zlib.compressobj(6), io.BytesIO()
    previous = np.zeros((1, width * samples * 2), dtype=np.uint8)
    block = max(1, _PNG_BLOCK_BYTES // previous.shape[1])
    for top in range(0, height, block):
        rows = _png16_bytes(out, top, top + block)
        pending.write(compressor.compress(_filter_rows(rows, previous, samples * 2).tobytes()))
        previous = rows[-1:]
        _flush_idat(f, pending, _IDAT_SIZE)
    pending.write(compressor.flush())
    _flush_idat(f, pending, 1)
    f.write(meta.png_chunk(b"IEND", b""))


def _png16_bytes(out: _Output, start: int, stop: int) -> np.ndarray:
    """Rows start..stop as big-endian sample bytes, alpha interleaved."""
    block = out.pixels[start:stop]
    if out.alpha is not None:
        block = np.dstack([block, out.alpha[start:stop]])
    return block.astype(">u2").reshape(block.shape[0], -1).view(np.uint8)


def _flush_idat(f: BinaryIO, pending: io.BytesIO, minimum: int) -> None:
    if pending.tell() >= minimum:
        f.write(meta.png_chunk(b"IDAT", pending.getvalue()))
        pending.seek(0)
        pending.truncate()


def _filter_rows(rows: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Each row with the PNG filter (0-4) that minimises the sum of absolute residuals.

    That is libpng's heuristic; encoding uses only unfiltered neighbours, so all five
    candidates are computed for the whole block at once.
    """
    x = rows.astype(np.int16)
    up = np.vstack([previous, rows[:-1]]).astype(np.int16)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up_left = np.zeros_like(x)
    up_left[:, bpp:] = up[:, :-bpp]
    candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - _paeth(left, up, up_left)])
    residuals = candidates.astype(np.uint8)  # integer casts wrap: the modulo-256 PNG arithmetic
    cost = np.abs(residuals.view(np.int8)).view(np.uint8).sum(axis=2, dtype=np.uint32)  # |-128| wraps to 128
    best = cost.argmin(axis=0)
    chosen = residuals[best, np.arange(rows.shape[0])]
    return np.hstack([best.astype(np.uint8)[:, None], chosen])


def _paeth(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    estimate = left + up - up_left
    to_left, to_up, to_corner = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - up_left)
    return np.where((to_left <= to_up) & (to_left <= to_corner), left, np.where(to_up <= to_corner, up, up_left))
