"""Reading photos into working arrays without losing bit depth, colour profile or metadata.

Pillow opens every file (format sniffing, header, metadata) but decodes 16-bit
colour PNG and TIFF to 8 bits, so those pixels come from pypng and tifffile. Bit
depth is decided from the header, never from pixel values. The size is checked
against ``max_pixels`` before anything is decoded, and every failure surfaces as
one ``ImageReadError`` line.
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageCms

from ribsr_cli.errors import RibsrError
from ribsr_cli.imaging import DEFAULT_MAX_PIXELS
from ribsr_cli.imaging import metadata as meta

READ_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "PPM")  # PPM: Pillow's name for PPM and PGM
_FORMAT_NAMES = {"MPO": "JPEG"}  # phone JPEGs with a depth/preview picture


class ImageReadError(RibsrError, ValueError):
    """An input cannot be read as a photo; str() is one line, ``<path>: <reason>``."""


@dataclass
class LoadedImage:
    """Decoded pixels (HxWxC, C=3 colour or 1 grey, uint8/uint16) and what travels with them.

    `exif` (``b"Exif\\0\\0"`` + TIFF data) has its orientation reset to 1 because the
    rotation is already applied to `pixels`; `icc_profile` is the source's, untouched
    (pixels stay in its space), except after a CMYK conversion. `mode_in` is Pillow's
    name for the source mode; 16-bit colour, which Pillow has no mode for, reads
    'RGB;16', 'RGBA;16' or 'LA;16' (16-bit grey is Pillow's 'I;16').
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    mode_in: str
    bit_depth: int
    format: str
    exif: bytes | None = None
    xmp: bytes | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    n_frames: int = 1
    warnings: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_grey(self) -> bool:
        return self.pixels.shape[2] == 1


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode the first frame of an image file; any bad input raises ImageReadError."""
    path = Path(path)
    _check_file(path)
    _align_pillow_limit(max_pixels)
    with warnings.catch_warnings(record=True) as caught, _quiet_tifffile_log():
        warnings.simplefilter("always")
        try:
            image = _read(path, max_pixels)
        except ImageReadError:
            raise
        except Image.DecompressionBombError:
            raise ImageReadError(path, f"image is larger than the {max_pixels:,}-pixel limit") from None
        except MemoryError:
            raise ImageReadError(path, "not enough memory to decode it") from None
        except Exception as exc:  # every decoder error on bad data: OSError, SyntaxError, struct.error ...
            raise ImageReadError(path, _describe(exc)) from None
    image.warnings.extend(_library_warnings(caught, image.warnings))
    return image


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise ImageReadError(path, "no such file")
        if path.is_dir():
            raise ImageReadError(path, "is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file")
    except OSError as exc:
        raise ImageReadError(path, f"cannot access it ({exc.strerror or exc})") from None


@contextmanager
def _quiet_tifffile_log() -> Iterator[None]:
    """tifffile logs every malformed tag; the user gets the reason in one ImageReadError line instead."""
    logger = logging.getLogger("tifffile")
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _align_pillow_limit(max_pixels: int) -> None:
    """Keep Pillow's own bomb check no stricter than ours, so our clean message wins.

    Pillow raises DecompressionBombError above twice its limit; raising the limit to
    at least `max_pixels` (never lowering it, so other callers are unaffected) means
    anything Pillow refuses, we would refuse too.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _describe(exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a supported image (JPEG, PNG, TIFF, WebP, BMP or GIF)"
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"cannot read it ({exc.strerror})"
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image file ({text})"
    return f"corrupt or unreadable image data ({text})"


def _library_warnings(caught: list[warnings.WarningMessage], already: list[str]) -> list[str]:
    """Decoder warnings (corrupt EXIF, odd TIFF tags) worth showing, without duplicates."""
    out: list[str] = []
    for item in caught:
        if issubclass(item.category, (DeprecationWarning, ResourceWarning, Image.DecompressionBombWarning)):
            continue
        text = " ".join(str(item.message).split())
        if text and text not in out and text not in already:
            out.append(text)
    return out


def _read(path: Path, max_pixels: int) -> LoadedImage:
    try:
        opened = Image.open(path, formats=READ_FORMATS)
    except Image.UnidentifiedImageError:
        if _starts_like_tiff(path):
            return _read_tiff_only(path, max_pixels)
        raise
    with opened as im:
        fmt = _FORMAT_NAMES.get(im.format or "", im.format or "")
        _check_pixels(path, *im.size, max_pixels)
        notes: list[str] = []
        n_frames = _frame_count(im, notes)
        bit_depth = _header_bit_depth(path, im, fmt)
        if fmt == "PPM" and bit_depth == 8 and (_pnm_maxval(path) or 0) > 255:
            notes.append("16-bit PPM colour is decoded at 8 bits")
        native = _needs_native_decoder(im, fmt, bit_depth)
        tiff_orientation = _tiff_orientation(im) if fmt == "TIFF" else None  # before load consumes it
        _load_first_frame(im, tolerate_failure=native)
        pillow_rotated = tiff_orientation is not None and not native and meta.ORIENTATION_TAG not in im.tag_v2
        exif, xmp = _exif_and_xmp(im, fmt, notes)
        icc = im.info.get("icc_profile") or None
        dpi = meta.tidy_dpi(im.info.get("dpi"))
        if native:
            pixels, alpha, mode_in = _decode_native(path, fmt, max_pixels)
        else:
            pixels, alpha, mode_in, icc = _decode_pillow(im, bit_depth, icc, notes)
    if pixels.dtype != (np.uint16 if bit_depth == 16 else np.uint8):
        raise ValueError(f"decoded {pixels.dtype} samples disagree with the {bit_depth}-bit header")
    orientation, exif = _checked_exif(exif, notes)
    image = LoadedImage(pixels, alpha, mode_in, bit_depth, fmt, exif, xmp, icc, dpi, n_frames, notes)
    return _upright(image, orientation if tiff_orientation is None else tiff_orientation, pillow_rotated)


def _tiff_orientation(im: Image.Image) -> int:
    """The TIFF Orientation tag; newer Pillow applies and deletes it during load()."""
    value = im.tag_v2.get(meta.ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(image: LoadedImage, orientation: int, already_applied: bool = False) -> LoadedImage:
    """Bake the orientation into pixels and alpha; XMP is told so too (EXIF already is)."""
    if orientation == 1:
        return image
    if not already_applied:
        image.pixels = meta.apply_orientation(image.pixels, orientation)
        if image.alpha is not None:
            image.alpha = meta.apply_orientation(image.alpha, orientation)
    if image.xmp is not None:
        image.xmp = meta.xmp_orientation_reset(image.xmp)
    return image


def _starts_like_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_tiff_only(path: Path, max_pixels: int) -> LoadedImage:
    """TIFFs Pillow cannot open (16-bit grey+alpha, ...): all from tifffile, EXIF not carried."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        n_frames = len(tif.pages)
        tags = {tag.code: tag.value for tag in page.tags.values()}
    bits = tags.get(258, 8)
    bit_depth = max(bits) if isinstance(bits, tuple) else int(bits)
    if bit_depth not in (8, 16) or tags.get(339, 1) not in (1, (1,)):
        raise ImageReadError(path, f"{bit_depth}-bit or floating-point samples are not supported; save it as 8- or 16-bit")
    pixels, alpha, mode_in = _tiff_pixels(path, max_pixels)
    notes = ["TIFF read without Pillow; EXIF is not carried over"] if 34665 in tags else []
    if n_frames > 1:
        notes.append(f"{n_frames} frames/pages; only the first is used")
    icc, xmp = meta.xmp_bytes(tags.get(meta.TIFF_ICC_TAG)), meta.xmp_bytes(tags.get(meta.TIFF_XMP_TAG))
    image = LoadedImage(pixels, alpha, mode_in, bit_depth, "TIFF", None, xmp, icc, _tiff_dpi(tags), n_frames, notes)
    orientation = int(tags.get(meta.ORIENTATION_TAG, 1))
    return _upright(image, orientation if 1 <= orientation <= 8 else 1)


def _tiff_dpi(tags: dict[int, Any]) -> tuple[float, float] | None:
    """DPI from XResolution/YResolution rationals and ResolutionUnit (2 inch, 3 cm)."""
    try:
        x, y = (num / den for num, den in (tags[282], tags[283]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    unit = int(tags.get(296, 2))
    scale = {2: 1.0, 3: 2.54}.get(unit)
    return meta.tidy_dpi((x * scale, y * scale)) if scale else None


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse from the header alone, before a decoder allocates width*height samples."""
    if width * height > max_pixels:
        raise ImageReadError(path, f"{width}x{height} pixels is over the {max_pixels:,}-pixel limit")


def _frame_count(im: Image.Image, notes: list[str]) -> int:
    try:
        n_frames = int(getattr(im, "n_frames", 1))
    except Exception:  # a broken later frame/IFD must not sink a good first one
        notes.append("could not count the frames after the first; only the first is used")
        return 1
    finally:
        im.seek(0)
    if n_frames > 1:
        notes.append(f"{n_frames} frames/pages; only the first is used")
    return n_frames


def _load_first_frame(im: Image.Image, tolerate_failure: bool) -> None:
    """Decode with Pillow; for pypng/tifffile inputs this only gathers late metadata chunks."""
    try:
        im.load()
    except Exception:
        if not tolerate_failure:
            raise


def _header_bit_depth(path: Path, im: Image.Image, fmt: str) -> int:
    """8 or 16 from the stored sample size (PNG IHDR, TIFF BitsPerSample), never from values."""
    if fmt == "PNG":
        with open(path, "rb") as f:
            header = meta.read_png_header(f.read(33))
        return 16 if header is not None and header.bit_depth == 16 else 8
    if fmt == "TIFF":
        bits = im.tag_v2.get(258, (1,))
        bits = max(bits) if isinstance(bits, tuple) else int(bits)
        if im.tag_v2.get(339) in (3, (3,)) or bits > 16:
            raise ImageReadError(path, f"{bits}-bit or floating-point samples are not supported; save it as 8- or 16-bit")
        return 16 if bits > 8 else 8
    if fmt == "PPM":  # Pillow reads 16-bit grey (maxval > 255) exactly as mode I, 16-bit colour at 8 bits
        return 16 if im.mode == "I" else 8
    return 8


def _pnm_maxval(path: Path) -> int | None:
    with open(path, "rb") as f:
        return meta.read_pnm_maxval(f.read(1024))


def _needs_native_decoder(im: Image.Image, fmt: str, bit_depth: int) -> bool:
    """16-bit files whose samples Pillow would cut to 8 bits (grey without tRNS it keeps exact)."""
    if bit_depth != 16 or fmt not in ("PNG", "TIFF"):
        return False
    exact_grey = im.mode.startswith("I;16") and "transparency" not in im.info
    if fmt == "TIFF" and im.mode == "CMYK":
        return False  # no 16-bit CMYK path: Pillow's 8-bit decode, with a note
    return not exact_grey


def _exif_and_xmp(im: Image.Image, fmt: str, notes: list[str]) -> tuple[bytes | None, bytes | None]:
    """Raw EXIF (with prefix) and XMP; a TIFF's EXIF is rebuilt from its own tags."""
    if fmt != "TIFF":
        raw = im.info.get("exif") or None
        xmp = meta.xmp_bytes(im.info.get("xmp") or im.info.get(meta.XMP_PNG_KEYWORD))
        return (meta.exif_with_prefix(raw) if raw else None), xmp
    xmp = meta.xmp_bytes(im.tag_v2.get(meta.TIFF_XMP_TAG))
    try:
        return meta.tiff_exif(im.getexif()), xmp
    except Exception:  # a damaged EXIF sub-IFD must not sink good pixels
        notes.append("unreadable TIFF EXIF tags; EXIF dropped")
        return None, xmp


def _checked_exif(exif: bytes | None, notes: list[str]) -> tuple[int, bytes | None]:
    """(orientation to apply, EXIF with orientation reset); broken EXIF is dropped with a note."""
    if exif is None:
        return 1, None
    try:
        value = meta.exif_orientation(exif)
    except meta.ExifError as exc:
        notes.append(f"broken EXIF ({exc}); it is dropped")
        return 1, None
    if not 1 <= value <= 8:
        notes.append(f"ignored invalid EXIF orientation {value}")
        value = 1
    return value, meta.exif_orientation_reset(exif)


# --- Pillow decoding (8-bit and exact 16-bit grey) -------------------------------------------

_PLAIN_CONVERSIONS = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "PA": "RGBA"}


def _decode_pillow(im: Image.Image, bit_depth: int, icc: bytes | None,
                   notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, str, bytes | None]:
    """(pixels, alpha, mode_in, icc) from a loaded Pillow image."""
    mode_in = im.mode
    if mode_in == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc, notes, bit_depth)
    elif mode_in == "P":
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif mode_in in _PLAIN_CONVERSIONS:
        im = im.convert(_PLAIN_CONVERSIONS[mode_in])
    elif mode_in in ("I", "I;16", "I;16B", "I;16L", "I;16N") and bit_depth == 16:
        return (*_grey16(im), mode_in, icc)
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"unsupported colour mode {mode_in}")
    arr = np.asarray(im)
    pixels, alpha = _split_bands(arr if arr.ndim == 3 else arr[..., None], im.mode)
    return pixels, alpha, mode_in, icc


def _split_bands(arr: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """HxWxC colour/grey array and HxW alpha (or None) from interleaved samples."""
    if mode.endswith("A"):
        return np.ascontiguousarray(arr[..., :-1]), np.ascontiguousarray(arr[..., -1])
    return np.ascontiguousarray(arr), None


def _grey16(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(im)
    if arr.dtype.kind == "i" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
        raise ValueError(f"{im.mode} samples outside the 16-bit range")
    pixels = arr.astype(np.uint16)[..., None]
    transparent = im.info.get("transparency")
    alpha = None
    if isinstance(transparent, int):
        alpha = np.where(pixels[..., 0] == transparent, 0, 65535).astype(np.uint16)
    return pixels, alpha


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None, notes: list[str],
                 bit_depth: int) -> tuple[Image.Image, bytes | None]:
    """RGB via the embedded CMYK profile to sRGB, else Pillow's naive formula.

    The CMYK profile cannot describe RGB pixels, so it is replaced by sRGB (ICC path)
    or dropped (naive path); the note tells the user which.
    """
    depth = " (16-bit CMYK decoded at 8 bits)" if bit_depth == 16 else ""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            rgb = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            notes.append(f"CMYK converted to sRGB with its ICC profile; the output carries sRGB, not the CMYK profile{depth}")
            return rgb, srgb.tobytes()
        except Exception:
            notes.append("the CMYK ICC profile is unusable; converting naively")
    notes.append(f"CMYK converted to RGB naively (no usable ICC profile); the output carries no colour profile{depth}")
    return im.convert("RGB"), None


# --- 16-bit decoders: pypng for PNG, tifffile for TIFF ---------------------------------------


def _decode_native(path: Path, fmt: str, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    return _png16(path) if fmt == "PNG" else _tiff_pixels(path, max_pixels)


_PNG16_MODES = {0: "I;16", 2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}


def _png16(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Exact 16-bit samples via pypng's read() (no sBIT rescaling, unlike asDirect())."""
    import png

    with open(path, "rb") as f:
        header = meta.read_png_header(f.read(33))
        if header is None:
            raise ValueError("not a PNG after all")
        _check_inflated_size(f, header)
    with open(path, "rb") as f:
        width, height, rows, info = png.Reader(file=f).read()
        planes = int(info["planes"])
        flat = np.empty((height, width * planes), dtype=np.uint16)
        for y, row in enumerate(rows):
            flat[y] = np.frombuffer(row, dtype=np.uint16)
    arr = flat.reshape(height, width, planes)
    has_alpha = bool(info.get("alpha"))
    pixels, alpha = _split_bands(arr, "A" if has_alpha else "")
    if "transparent" in info and not has_alpha:
        key = np.asarray(info["transparent"], dtype=np.uint16).reshape(1, 1, -1)
        alpha = np.where((pixels == key).all(axis=2), 0, 65535).astype(np.uint16)
    return pixels, alpha, _PNG16_MODES.get(header.colour_type, "RGB;16")


def _check_inflated_size(f: Any, header: meta.PngHeader) -> None:
    """Refuse IDAT streams that inflate far past what the header allows (zlib bombs).

    pypng inflates each IDAT chunk in one call, so a small file could otherwise
    expand to gigabytes; this pass streams with a bounded output buffer.
    """
    limit = header.raw_size * 5 // 4 + 4096  # slack for Adam7's extra filter bytes
    inflater, total = zlib.decompressobj(), 0
    for kind, data in meta.iter_png_chunks(f):
        if kind != b"IDAT":
            continue
        while data:
            total += len(inflater.decompress(data, 1 << 20))
            if total > limit:
                raise ValueError("compressed pixel data inflates past the size in its header")
            data = inflater.unconsumed_tail


def _tiff_pixels(path: Path, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Exact RGB(A)/grey(+alpha) samples of the first TIFF page via tifffile."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
        photometric = int(page.photometric)
        if photometric not in (1, 2):  # MINISBLACK, RGB
            raise ValueError(f"TIFF with photometric {page.photometric.name} is not supported here")
        try:
            arr = page.asarray()
        except (ValueError, KeyError) as exc:
            if "imagecodecs" in str(exc):
                raise ImageReadError(path, f"this TIFF's {page.compression.name} compression needs the optional "
                                     "'imagecodecs' package (pip install imagecodecs), or re-save it uncompressed or ZIP") from None
            raise
        extras = tuple(int(e) for e in page.extrasamples)
    arr = _samples_last(arr, page.axes)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"TIFF samples of type {arr.dtype} are not supported")
    colour = 3 if photometric == 2 else 1
    if arr.shape[2] not in (colour, colour + 1):
        raise ValueError(f"{arr.shape[2]} samples per pixel are not supported")
    pixels, alpha = _split_bands(arr, "A" if arr.shape[2] > colour else "")
    if alpha is not None and extras[:1] == (1,):  # associated (premultiplied) alpha
        pixels = _unpremultiply(pixels, alpha)
    mode = ("RGB" if colour == 3 else "L") + ("A" if alpha is not None else "")
    if arr.dtype == np.uint8:
        return pixels, alpha, mode
    return pixels, alpha, "I;16" if mode == "L" else mode + ";16"


def _samples_last(arr: np.ndarray, axes: str) -> np.ndarray:
    """HxWxS whatever the planar configuration."""
    if arr.ndim == 2:
        return arr[..., None]
    if axes.startswith("S"):
        return np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    return arr


def _unpremultiply(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    top = float(np.iinfo(pixels.dtype).max)
    a = alpha.astype(np.float64)[..., None]
    out = np.where(a > 0, pixels.astype(np.float64) * top / np.maximum(a, 1.0), 0.0)
    return np.clip(np.rint(out), 0, top).astype(pixels.dtype)
