"""Container-level facts that travel with the pixels: EXIF, XMP, ICC, DPI and PNG chunks.

EXIF is kept as raw bytes (``b"Exif\\0\\0"`` + TIFF structure, the JPEG APP1 payload)
and edited in place rather than re-serialised, so maker notes and offsets that a
round-trip through a parser would break survive byte for byte. Only the
orientation value is patched, because the reader bakes the rotation into the pixels.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import numpy as np

from ribsr_cli.errors import RibsrError

EXIF_PREFIX = b"Exif\x00\x00"
ORIENTATION_TAG = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_PNG_KEYWORD = "XML:com.adobe.xmp"
TIFF_XMP_TAG = 700
TIFF_ICC_TAG = 34675
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# Descriptive IFD0 tags a TIFF shares with EXIF; layout tags (strips, sizes) must not travel.
TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, ORIENTATION_TAG, 0x0131, 0x0132, 0x013B, 0x8298)
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation(?:="|>))\s*[2-8]\s*(?=["<])')


class ExifError(RibsrError, ValueError):
    """EXIF bytes whose TIFF structure cannot be walked; callers drop them with a warning."""


def exif_with_prefix(raw: bytes) -> bytes:
    """EXIF in the JPEG APP1 form; PNG eXIf and WebP EXIF chunks store it without the prefix."""
    return raw if raw.startswith(EXIF_PREFIX) else EXIF_PREFIX + raw


def _ifd0_entries(tiff: bytes) -> tuple[str, list[tuple[int, int, int, int]]]:
    """(byte order, [(entry offset, tag, type, count)]) of IFD0, bounds-checked."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        raise ExifError("no TIFF header")
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd < 8 or ifd + 2 > len(tiff):
        raise ExifError("IFD0 offset outside the data")
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if count == 0 or ifd + 2 + 12 * count > len(tiff):
        raise ExifError("IFD0 entries outside the data")
    entries = []
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, at)
        entries.append((at, tag, kind, n))
    return order, entries


def _orientation_slot(tiff: bytes) -> tuple[str, int] | None:
    """(byte order, offset of the SHORT value) of the orientation entry, if there is one."""
    order, entries = _ifd0_entries(tiff)
    for at, tag, kind, count in entries:
        if tag == ORIENTATION_TAG and kind == 3 and count == 1:
            return order, at + 8
    return None


def exif_orientation(raw: bytes) -> int:
    """EXIF orientation 1..8 (1 when absent); raises ExifError when the EXIF is unreadable."""
    tiff = exif_with_prefix(raw)[len(EXIF_PREFIX):]
    slot = _orientation_slot(tiff)
    if slot is None:
        return 1
    order, at = slot
    return struct.unpack_from(order + "H", tiff, at)[0]


def exif_orientation_reset(raw: bytes) -> bytes:
    """EXIF (with prefix) whose orientation says 1, all other bytes untouched."""
    data = bytearray(exif_with_prefix(raw))
    slot = _orientation_slot(bytes(data[len(EXIF_PREFIX):]))
    if slot is not None:
        order, at = slot
        struct.pack_into(order + "H", data, len(EXIF_PREFIX) + at, 1)
    return bytes(data)


def xmp_orientation_reset(xmp: bytes) -> bytes:
    """XMP whose tiff:Orientation says 1, so viewers that trust XMP do not rotate twice."""
    return _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels (HxW or HxWxC) as a viewer shows them for an EXIF orientation value."""
    if orientation in (5, 6, 7, 8):
        arr = arr.swapaxes(0, 1)  # transpose, then the flips below finish the rotation
    flips = {2: (False, True), 3: (True, True), 4: (True, False), 5: (False, False),
             6: (False, True), 7: (True, True), 8: (True, False)}
    flip_rows, flip_cols = flips.get(orientation, (False, False))
    if flip_rows:
        arr = arr[::-1]
    if flip_cols:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def tiff_exif(tags: Any) -> bytes | None:
    """EXIF (with prefix) rebuilt from a TIFF's own IFD: descriptive tags plus EXIF/GPS IFDs.

    `tags` is Pillow's ``Image.Exif`` of the TIFF; its strip offsets and sizes are left
    behind because they describe the source file's layout, not the photo.
    """
    from PIL import Image

    out = Image.Exif()
    for tag in TIFF_DESCRIPTIVE_TAGS:
        if tag in tags:
            out[tag] = tags[tag]
    for ifd in (_EXIF_IFD, _GPS_IFD):
        sub = tags.get_ifd(ifd)
        if sub:
            out[ifd] = dict(sub)
    return out.tobytes() if len(out) else None


def exif_ifd0_tags(raw: bytes) -> dict[int, Any]:
    """Descriptive IFD0 tags of an EXIF blob, for writers (tifffile) that take plain tags."""
    from PIL import Image

    exif = Image.Exif()
    exif.load(exif_with_prefix(raw))
    return {tag: exif[tag] for tag in TIFF_DESCRIPTIVE_TAGS if tag in exif}


def exif_sub_ifds(raw: bytes) -> dict[int, dict[int, Any]]:
    """The EXIF (exposure, lens) and GPS sub-IFDs of an EXIF blob, by pointer tag."""
    from PIL import Image

    exif = Image.Exif()
    exif.load(exif_with_prefix(raw))
    return {tag: dict(exif.get_ifd(tag)) for tag in (_EXIF_IFD, _GPS_IFD) if exif.get_ifd(tag)}


def tiff_append_sub_ifds(f: BinaryIO, sub_ifds: dict[int, dict[int, Any]]) -> bool:
    """Append EXIF/GPS IFDs to a finished little-endian classic TIFF and point IFD0 at them.

    IFD0 is rewritten at the end of the file with the two pointer entries added and
    the header redirected to it; the old IFD0 is left as unused bytes. Everything is
    serialised in memory first, so a failure writes nothing. False for BigTIFF.
    """
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    f.seek(0)
    head = f.read(8)
    if head[:4] != b"II*\x00":
        return False
    (ifd0,) = struct.unpack_from("<I", head, 4)
    f.seek(ifd0)
    (count,) = struct.unpack("<H", f.read(2))
    entries = {struct.unpack_from("<H", raw)[0]: raw for raw in _chunks(f.read(12 * count), 12)}
    next_ifd = f.read(4)
    position = f.seek(0, 2)
    blobs = [b"\0" * (position % 2)]
    position += position % 2
    for tag, values in sub_ifds.items():
        ifd = ImageFileDirectory_v2(b"II*\x00\x00\x00\x00\x00", group=tag)
        for key, value in values.items():
            ifd[key] = value
        blob = ifd.tobytes(position)
        blob += b"\0" * (len(blob) % 2)
        entries[tag] = struct.pack("<HHII", tag, 4, 1, position)
        blobs.append(blob)
        position += len(blob)
    if position + 6 + 12 * len(entries) >= 1 << 32:
        return False
    new_ifd0 = struct.pack("<H", len(entries)) + b"".join(entries[t] for t in sorted(entries)) + next_ifd
    f.write(b"".join(blobs) + new_ifd0)
    f.seek(4)
    f.write(struct.pack("<I", position))
    f.seek(0, 2)
    return True


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def xmp_bytes(value: Any) -> bytes | None:
    """XMP packet as bytes from whichever form Pillow handed over (str, bytes, int tuple)."""
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, tuple):
        return bytes(value)
    return bytes(value)


def tidy_dpi(dpi: Any) -> tuple[float, float] | None:
    """(x, y) dots per inch, or None when missing or nonsense.

    PNG stores pixels per metre, so 300 dpi comes back as 299.9994; values within one
    pixel-per-metre step (0.0254 dpi) of a whole number are snapped to it.
    """
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in (x, y)):
        return None
    return (_snap(x), _snap(y))


def _snap(value: float) -> float:
    whole = round(value)
    return float(whole) if abs(value - whole) <= 0.0254 else round(value, 3)


def icc_colour_space(icc: bytes) -> str | None:
    """The data colour space of an ICC profile ('RGB', 'GRAY', 'CMYK', ...), None if unreadable."""
    if len(icc) < 20:
        return None
    return icc[16:20].decode("ascii", "replace").strip() or None


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that decide how (and whether) a PNG is decoded."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def samples(self) -> int:
        """Samples per pixel as stored (palette indices count as one)."""
        return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(self.colour_type, 0)

    @property
    def raw_size(self) -> int:
        """Bytes the inflated IDAT stream holds without interlacing (filter byte per row)."""
        row = (self.width * self.samples * self.bit_depth + 7) // 8
        return self.height * (row + 1)


def read_png_header(head: bytes) -> PngHeader | None:
    """IHDR of a PNG from its first 33 bytes; None when it is not a PNG."""
    if not head.startswith(PNG_SIGNATURE):
        return None
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR header")
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return PngHeader(width, height, depth, colour, interlace)


def read_pnm_maxval(head: bytes) -> int | None:
    """The largest sample value a PGM/PPM header declares (1 for a bitmap), from the file's first bytes;
    None when they are no such header. Above 255 the samples are 16-bit."""
    tokens = re.sub(rb"#[^\r\n]*", b" ", head).split(maxsplit=4)  # comments may sit between the fields
    if tokens[:1] in ([b"P1"], [b"P4"]):
        return 1
    if len(tokens) < 4 or tokens[0] not in (b"P2", b"P3", b"P5", b"P6") or not tokens[3].isdigit():
        return None
    return int(tokens[3])


def iter_png_chunks(f: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of each chunk after the signature, stopping at IEND or the end of data."""
    f.seek(len(PNG_SIGNATURE))
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        data = f.read(length)
        if len(data) < length:
            raise ValueError(f"PNG chunk {kind!r} is truncated")
        f.read(4)  # CRC; the decoders check it
        yield kind, data
        if kind == b"IEND":
            return


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_metadata_chunks(exif: bytes | None, xmp: bytes | None, icc: bytes | None,
                        dpi: tuple[float, float] | None) -> bytes:
    """iCCP, pHYs, eXIf and iTXt (XMP) chunks, all valid before IDAT."""
    out = b""
    if icc:
        out += png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:
        ppm = [max(1, round(v / 0.0254)) for v in dpi]
        out += png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if exif:
        out += png_chunk(b"eXIf", exif_with_prefix(exif)[len(EXIF_PREFIX):])
    if xmp:
        out += png_chunk(b"iTXt", XMP_PNG_KEYWORD.encode("latin-1") + b"\x00\x00\x00\x00\x00" + xmp)
    return out
