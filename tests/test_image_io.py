"""Image I/O on real photo content: every format and mode, exact 16-bit, metadata, bad input, atomic writes.

Fixtures are crops of Set14 photos converted in tmp_path; files are written with
independent encoders (Pillow, pypng, tifffile) where that is the point, so the
reader is not only checked against ribsr's own writer.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps
from PIL.JpegImagePlugin import get_sampling

from conftest import EXAMPLES
from ribsr_cli import fileutil
from ribsr_cli.imaging import io_write
from ribsr_cli.imaging.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    ImageWriteError,
    from_float,
    is_image_path,
    output_format_for,
    read_image,
    to_float,
    to_rgb,
    write_image,
)
from ribsr_cli.imaging.metadata import exif_orientation, png_chunk
from ribsr_cli.pixels import grey_like

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


# --- fixtures: real photo crops ----------------------------------------------------------------


@pytest.fixture(scope="module")
def photo(benchmarks_dir: Path) -> np.ndarray:
    """96x128 (non-square, so rotations show) RGB uint8 crop of a real Set14 photo."""
    with Image.open(benchmarks_dir / "Set14" / "HR" / "baboon.png") as im:
        return np.asarray(im.convert("RGB").crop((200, 150, 328, 246)))


@pytest.fixture(scope="module")
def photo16(photo: np.ndarray) -> np.ndarray:
    """16-bit version whose low bytes carry information, so 8-bit truncation shows."""
    rng = np.random.default_rng(16)
    return photo.astype(np.uint16) * 256 + rng.integers(0, 256, photo.shape, dtype=np.uint16)


@pytest.fixture(scope="module")
def mask(photo: np.ndarray) -> np.ndarray:
    """An alpha plane with full, zero and partial transparency."""
    h, w = photo.shape[:2]
    return np.clip(np.add.outer(np.arange(h) * 3, np.arange(w) * 2), 0, 255).astype(np.uint8)


def _grey(arr: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).convert("L"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if err == 0 else 10 * np.log10(255.0**2 / err)


def _write_png16(path: Path, arr: np.ndarray, mode: str, **kwargs: object) -> None:
    """16-bit PNG written by pypng, an encoder independent of ribsr's."""
    h, w = arr.shape[:2]
    writer = png.Writer(w, h, greyscale=mode.startswith("L"), alpha=mode.endswith("A"), bitdepth=16, **kwargs)
    with open(path, "wb") as f:
        writer.write(f, arr.reshape(h, -1).astype(np.uint16))


# --- 8-bit formats and modes written by Pillow ---------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_png8_modes_round_trip_exactly(tmp_path: Path, photo: np.ndarray, mask: np.ndarray, mode: str) -> None:
    base = photo if mode.startswith("RGB") else _grey(photo)
    arr = np.dstack([base, mask]) if mode.endswith("A") else base
    Image.fromarray(arr).save(tmp_path / "x.png")
    img = read_image(tmp_path / "x.png")
    channels = 3 if mode.startswith("RGB") else 1
    assert (img.format, img.mode_in, img.bit_depth, img.pixels.dtype) == ("PNG", mode, 8, np.uint8)
    assert img.pixels.shape == (*photo.shape[:2], channels)
    np.testing.assert_array_equal(img.pixels, base.reshape(img.pixels.shape))
    if mode.endswith("A"):
        np.testing.assert_array_equal(img.alpha, mask)
    else:
        assert img.alpha is None


def test_palette_png_with_transparency_gives_alpha(tmp_path: Path, photo: np.ndarray) -> None:
    pal = Image.fromarray(photo).quantize(64)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    indices = np.asarray(pal)
    expected = np.asarray(pal.convert("RGB"))
    assert img.mode_in == "P" and img.pixels.shape[2] == 3
    np.testing.assert_array_equal(img.alpha, np.where(indices == 0, 0, 255))
    np.testing.assert_array_equal(img.pixels[indices != 0], expected[indices != 0])


def test_palette_png_without_transparency_has_no_alpha(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).quantize(32).save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.mode_in == "P" and img.alpha is None and img.pixels.shape[2] == 3


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_read_matches_pillow_decode(tmp_path: Path, photo: np.ndarray, mode: str) -> None:
    src = Image.fromarray(photo).convert(mode)
    src.save(tmp_path / "x.jpg", quality=92)
    img = read_image(tmp_path / "x.jpg")
    with Image.open(tmp_path / "x.jpg") as ref:
        expected = np.asarray(ref).reshape(img.pixels.shape)
    assert (img.format, img.mode_in, img.bit_depth) == ("JPEG", mode, 8)
    np.testing.assert_array_equal(img.pixels, expected)
    assert _psnr(img.pixels, np.asarray(src).reshape(img.pixels.shape)) > 26


def test_cmyk_jpeg_without_profile_is_converted_naively(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    img = read_image(tmp_path / "c.jpg")
    assert img.mode_in == "CMYK" and img.pixels.shape[2] == 3 and img.icc_profile is None
    assert any("CMYK" in w and "naive" in w for w in img.warnings)
    assert _psnr(img.pixels, photo) > 25


def test_cmyk_with_unusable_profile_falls_back_to_naive(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=b"not really a profile" * 10)
    img = read_image(tmp_path / "c.jpg")
    assert img.pixels.shape[2] == 3 and img.icc_profile is None
    assert any("unusable" in w for w in img.warnings)


def test_cmyk_with_profile_is_converted_to_srgb(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "c.tif", icc_profile=_cmyk_profile())
    img = read_image(tmp_path / "c.tif")
    assert img.mode_in == "CMYK" and img.pixels.shape[2] == 3
    assert img.icc_profile is not None and img.icc_profile[16:20] == b"RGB "
    assert any("ICC" in w and "sRGB" in w for w in img.warnings)
    naive = read_image(_save_cmyk_without_profile(tmp_path, photo)).pixels
    assert _psnr(img.pixels, photo) > 15  # the coarse 2-point profile below approximates the naive formula
    assert not np.array_equal(img.pixels, naive)  # ... but it was the profile that did the work


def _save_cmyk_without_profile(tmp_path: Path, photo: np.ndarray) -> Path:
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "naive.tif")
    return tmp_path / "naive.tif"


def _cmyk_profile() -> bytes:
    """A minimal CMYK->Lab lut8 ICC profile (2-point grid, 'naive' separation), built by hand."""
    def lab(c: int, m: int, y: int, k: int) -> bytes:
        r, g, b = ((1 - v) * (1 - k) for v in (c, m, y))
        rgb = np.array([[[r, g, b]]], dtype=np.float32)
        lab_px = ImageCms.applyTransform(Image.fromarray((rgb * 255).astype(np.uint8)), _SRGB_TO_LAB)
        lightness, a, b = np.asarray(lab_px)[0, 0].tolist()
        return bytes([lightness, a ^ 0x80, b ^ 0x80])  # Pillow's a/b are signed; ICC's are offset by 128
    grid = b"".join(lab(c, m, y, k) for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1))
    identity = bytes(range(256))
    lut = (b"mft1" + b"\0" * 4 + bytes([4, 3, 2, 0]) + struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536)
           + identity * 4 + grid + identity * 3)
    wtpt = b"XYZ " + b"\0" * 4 + struct.pack(">3i", 63190, 65536, 54061)
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", 5) + b"cmyk\0" + b"\0" * 79
    tags = [(b"A2B0", lut), (b"wtpt", wtpt), (b"desc", desc)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"Lab "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + struct.pack(">3i", 63190, 65536, 54061))
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


_SRGB_TO_LAB = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def test_webp_with_alpha(tmp_path: Path, photo: np.ndarray, mask: np.ndarray) -> None:
    Image.fromarray(np.dstack([photo, mask])).save(tmp_path / "a.webp", lossless=True)
    img = read_image(tmp_path / "a.webp")
    assert (img.format, img.mode_in, img.bit_depth) == ("WEBP", "RGBA", 8)
    np.testing.assert_array_equal(img.alpha, mask)
    visible = mask > 0  # lossless WebP may rewrite colour under fully transparent pixels
    np.testing.assert_array_equal(img.pixels[visible], photo[visible])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_bmp_round_trip(tmp_path: Path, photo: np.ndarray, mode: str) -> None:
    src = np.asarray(Image.fromarray(photo).convert(mode))
    Image.fromarray(src).save(tmp_path / "x.bmp")
    img = read_image(tmp_path / "x.bmp")
    assert img.format == "BMP" and img.bit_depth == 8
    np.testing.assert_array_equal(img.pixels.reshape(src.shape), src)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_tiff8_round_trip(tmp_path: Path, photo: np.ndarray, mask: np.ndarray, mode: str) -> None:
    arr = {"RGB": photo, "L": _grey(photo), "RGBA": np.dstack([photo, mask])}[mode]
    Image.fromarray(arr).save(tmp_path / "x.tif", compression="tiff_lzw")
    img = read_image(tmp_path / "x.tif")
    assert (img.format, img.bit_depth, img.pixels.dtype) == ("TIFF", 8, np.uint8)
    assert (img.alpha is not None) == (mode == "RGBA")
    np.testing.assert_array_equal(img.pixels.reshape(arr.shape[:2] + (-1,)), arr.reshape(arr.shape[:2] + (-1,))[..., :img.pixels.shape[2]])


# --- 16 bits stay 16 bits, exactly --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_png16_from_pypng_is_exact(tmp_path: Path, photo16: np.ndarray, mode: str) -> None:
    base = photo16 if mode.startswith("RGB") else photo16[..., 1:2]
    alpha = photo16[..., 0]
    arr = np.dstack([base, alpha]) if mode.endswith("A") else base
    _write_png16(tmp_path / "x.png", arr, mode)
    img = read_image(tmp_path / "x.png")
    assert (img.bit_depth, img.pixels.dtype) == (16, np.uint16)
    assert img.mode_in == {"RGB": "RGB;16", "L": "I;16", "RGBA": "RGBA;16", "LA": "LA;16"}[mode]
    np.testing.assert_array_equal(img.pixels, base)
    if mode.endswith("A"):
        np.testing.assert_array_equal(img.alpha, alpha)


def test_png16_interlaced_is_exact(tmp_path: Path, photo16: np.ndarray) -> None:
    _write_png16(tmp_path / "i.png", photo16, "RGB", interlace=True)
    np.testing.assert_array_equal(read_image(tmp_path / "i.png").pixels, photo16)


@pytest.mark.parametrize("channels", [3, 1])
def test_png16_transparent_colour_becomes_alpha(tmp_path: Path, photo16: np.ndarray, channels: int) -> None:
    arr = photo16[..., :channels].copy()
    key = tuple(int(v) for v in arr[0, 0])
    _write_png16(tmp_path / "t.png", arr, "RGB" if channels == 3 else "L", transparent=key if channels == 3 else key[0])
    img = read_image(tmp_path / "t.png")
    assert img.bit_depth == 16 and img.alpha is not None and img.alpha.dtype == np.uint16
    np.testing.assert_array_equal(img.alpha == 0, (arr == np.array(key, dtype=np.uint16)).all(axis=2))
    np.testing.assert_array_equal(img.pixels, arr)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_with_small_values_is_still_16bit(tmp_path: Path, photo: np.ndarray, fmt: str) -> None:
    small = photo.astype(np.uint16)  # every value < 256: only the header says 16 bits
    path = tmp_path / f"s.{fmt.lower()}"
    if fmt == "PNG":
        _write_png16(path, small, "RGB")
    else:
        tifffile.imwrite(path, small, photometric="rgb")
    img = read_image(path)
    assert (img.bit_depth, img.pixels.dtype) == (16, np.uint16)
    np.testing.assert_array_equal(img.pixels, small)


@pytest.mark.parametrize("layout", ["rgb", "rgba", "grey", "planar", "grey_alpha"])
def test_tiff16_from_tifffile_is_exact(tmp_path: Path, photo16: np.ndarray, layout: str) -> None:
    alpha = photo16[..., 2]
    arr, kwargs = {
        "rgb": (photo16, {"photometric": "rgb"}),
        "rgba": (np.dstack([photo16, alpha]), {"photometric": "rgb", "extrasamples": ["unassalpha"]}),
        "grey": (photo16[..., 0], {"photometric": "minisblack"}),
        "planar": (np.moveaxis(photo16, -1, 0), {"photometric": "rgb", "planarconfig": "separate"}),
        "grey_alpha": (np.dstack([photo16[..., 0], alpha]), {"photometric": "minisblack", "extrasamples": ["unassalpha"]}),
    }[layout]
    tifffile.imwrite(tmp_path / "x.tif", arr, compression="zlib", **kwargs)
    img = read_image(tmp_path / "x.tif")
    assert (img.format, img.bit_depth, img.pixels.dtype) == ("TIFF", 16, np.uint16)
    expected = photo16[..., :1] if layout.startswith("grey") else photo16
    np.testing.assert_array_equal(img.pixels, expected)
    if layout.endswith("alpha") or layout == "rgba":
        np.testing.assert_array_equal(img.alpha, alpha)


def test_tiff16_associated_alpha_is_unpremultiplied(tmp_path: Path, photo16: np.ndarray) -> None:
    alpha = np.full(photo16.shape[:2], 32768, dtype=np.uint16)
    premultiplied = (photo16.astype(np.uint32) * 32768 // 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", np.dstack([premultiplied, alpha]), photometric="rgb", extrasamples=["assocalpha"])
    img = read_image(tmp_path / "a.tif")
    assert np.abs(img.pixels.astype(np.int64) - photo16).max() <= 2


def _patch_tiff_tag(path: Path, tag: int, value: int) -> None:
    """Overwrite a SHORT/LONG value in IFD0 of a little-endian TIFF written by tifffile."""
    data = bytearray(path.read_bytes())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
        code, kind = struct.unpack_from("<HH", data, at)
        if code == tag:
            struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, value)
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"tag {tag} not in IFD0")


def test_tiff_with_a_codec_tifffile_lacks_is_a_clean_error(tmp_path: Path, photo16: np.ndarray) -> None:
    """16-bit colour TIFF whose compression tag says LZW: without imagecodecs, say how to fix it."""
    tifffile.imwrite(tmp_path / "l.tif", photo16, photometric="rgb", compression="zlib")
    _patch_tiff_tag(tmp_path / "l.tif", 259, 5)  # Compression: Adobe deflate -> LZW
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "l.tif")
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        assert "imagecodecs" in str(info.value)


def test_lzw_16bit_tiff_reads_exactly_with_the_tiff_extra(tmp_path: Path, photo16: np.ndarray) -> None:
    """With the optional `tiff` extra (imagecodecs) a real LZW 16-bit colour TIFF keeps every sample."""
    pytest.importorskip("imagecodecs")
    tifffile.imwrite(tmp_path / "l.tif", photo16, photometric="rgb", compression="lzw")
    loaded = read_image(tmp_path / "l.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.pixels, photo16)


def test_float_tiff_is_unsupported(tmp_path: Path, photo: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "f.tif", photo.astype(np.float32) / 255, photometric="rgb")
    with pytest.raises(ImageReadError, match="floating-point|not supported|unsupported"):
        read_image(tmp_path / "f.tif")


# --- ribsr's writer: every format back through the reader --------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_write_16bit_round_trip_is_exact(tmp_path: Path, photo16: np.ndarray, fmt: str, grey: bool,
                                         with_alpha: bool) -> None:
    pixels = photo16[..., :1] if grey else photo16
    alpha = photo16[..., 2] if with_alpha else None
    path = tmp_path / f"o.{fmt.lower()}"
    assert write_image(path, pixels, alpha, fmt=fmt, bit_depth=16) == []
    img = read_image(path)
    assert (img.bit_depth, img.pixels.dtype) == (16, np.uint16)
    np.testing.assert_array_equal(img.pixels, pixels)
    if with_alpha:
        np.testing.assert_array_equal(img.alpha, alpha)


def test_png16_writer_output_decodes_with_pypng(tmp_path: Path, photo16: np.ndarray) -> None:
    """An independent decoder agrees with ribsr's encoder (all five PNG filters in use)."""
    write_image(tmp_path / "o.png", photo16, None, fmt="PNG", bit_depth=16)
    width, height, rows, info = png.Reader(filename=str(tmp_path / "o.png")).read()
    decoded = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, 3)
    assert info["bitdepth"] == 16
    np.testing.assert_array_equal(decoded, photo16)
    with Image.open(tmp_path / "o.png") as im:  # Pillow's 8-bit view of it is the high byte
        np.testing.assert_array_equal(np.asarray(im), (photo16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP", "JPEG"])
def test_write_8bit_round_trip(tmp_path: Path, photo: np.ndarray, fmt: str) -> None:
    path = tmp_path / f"o.{fmt.lower()}"
    write_image(path, photo, None, fmt=fmt, bit_depth=8, quality=95)
    img = read_image(path)
    assert (img.format, img.bit_depth, img.pixels.shape) == (fmt, 8, photo.shape)
    if fmt in ("PNG", "TIFF", "BMP"):
        np.testing.assert_array_equal(img.pixels, photo)
    else:
        assert _psnr(img.pixels, photo) > 26


def test_write_grey_png_8bit_with_alpha(tmp_path: Path, photo: np.ndarray, mask: np.ndarray) -> None:
    grey = _grey(photo)[..., None]
    write_image(tmp_path / "g.png", grey, mask, fmt="png", bit_depth=8)
    img = read_image(tmp_path / "g.png")
    assert img.mode_in == "LA"
    np.testing.assert_array_equal(img.pixels, grey)
    np.testing.assert_array_equal(img.alpha, mask)


def test_write_webp_keeps_alpha(tmp_path: Path, photo: np.ndarray, mask: np.ndarray) -> None:
    write_image(tmp_path / "a.webp", photo, mask, fmt="WEBP", bit_depth=8, quality=90)
    img = read_image(tmp_path / "a.webp")
    assert img.alpha is not None and np.abs(img.alpha.astype(int) - mask).max() <= 8


def test_jpeg_is_444_and_quality_matters(tmp_path: Path, photo: np.ndarray) -> None:
    write_image(tmp_path / "hi.jpg", photo, None, fmt="JPEG", bit_depth=8, quality=95)
    write_image(tmp_path / "lo.jpg", photo, None, fmt="jpg", bit_depth=8, quality=40)
    with Image.open(tmp_path / "hi.jpg") as im:
        assert get_sampling(im) == 0
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size


@pytest.mark.parametrize("fmt", ["JPEG", "BMP"])
def test_formats_without_alpha_flatten_with_a_warning(tmp_path: Path, photo: np.ndarray, mask: np.ndarray,
                                                      fmt: str) -> None:
    notes = write_image(tmp_path / "f.out", photo, mask, fmt=fmt, bit_depth=8)
    assert any("alpha" in n for n in notes)
    img = read_image(tmp_path / "f.out")
    assert img.alpha is None
    clear = mask == 0
    assert img.pixels[clear].min() > 200  # transparent areas became white


def test_16bit_into_8bit_format_warns_and_rounds(tmp_path: Path, photo16: np.ndarray) -> None:
    notes = write_image(tmp_path / "x.bmp", photo16, None, fmt="BMP", bit_depth=16)
    assert any("8 bits" in n for n in notes)
    expected = ((photo16.astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "x.bmp").pixels, expected)


def test_8bit_pixels_written_as_16bit_use_exact_scale(tmp_path: Path, photo: np.ndarray) -> None:
    write_image(tmp_path / "x.png", photo, None, fmt="PNG", bit_depth=16)
    img = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(img.pixels, photo.astype(np.uint16) * 257)


# --- metadata: EXIF orientation, ICC, XMP, DPI ------------------------------------------------


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "RibsrCam"
    exif[0x8769] = {0x829A: (1, 250)}  # exposure time, in the EXIF sub-IFD
    return exif.tobytes()


def test_jpeg_orientation_6_is_applied_and_reset(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).save(tmp_path / "r.jpg", quality=95, exif=_exif(6))
    img = read_image(tmp_path / "r.jpg")
    with Image.open(tmp_path / "r.jpg") as raw:
        rotated = np.rot90(np.asarray(raw), k=-1)  # 6 = rotate 90 degrees clockwise to view
    assert img.pixels.shape == (photo.shape[1], photo.shape[0], 3)
    np.testing.assert_array_equal(img.pixels, rotated)
    assert _psnr(img.pixels, np.rot90(photo, k=-1)) > 26
    assert exif_orientation(img.exif) == 1
    exif = Image.Exif()
    exif.load(img.exif)
    assert exif[0x010F] == "RibsrCam" and 0x829A in exif.get_ifd(0x8769)  # sub-IFD survives the patch


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path: Path, photo: np.ndarray, mask: np.ndarray, orientation: int) -> None:
    Image.fromarray(np.dstack([photo, mask])).save(tmp_path / "o.png", exif=_exif(orientation))
    img = read_image(tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as raw:
        expected = np.asarray(ImageOps.exif_transpose(raw))
    np.testing.assert_array_equal(img.pixels, expected[..., :3])
    np.testing.assert_array_equal(img.alpha, expected[..., 3])


def test_16bit_orientation_and_xmp_orientation_reset(tmp_path: Path, photo16: np.ndarray) -> None:
    write_image(tmp_path / "o.png", photo16, None, fmt="PNG", bit_depth=16, exif=_exif(8), xmp=XMP)
    img = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(img.pixels, np.rot90(photo16, k=1))
    assert exif_orientation(img.exif) == 1
    assert b'tiff:Orientation="1"' in img.xmp


@pytest.mark.parametrize("depth", [8, 16])
def test_tiff_orientation_tag_is_applied_once(tmp_path: Path, photo16: np.ndarray, depth: int) -> None:
    """Some Pillow versions rotate TIFFs on load themselves; either way the result is rotated once."""
    arr = photo16 if depth == 16 else (photo16 >> 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "o.tif", arr, photometric="rgb", extratags=[(0x0112, "H", 1, 6, True)])
    img = read_image(tmp_path / "o.tif")
    np.testing.assert_array_equal(img.pixels, np.rot90(arr, k=-1))
    assert img.exif is None or exif_orientation(img.exif) == 1


@pytest.mark.parametrize("fmt,depth", [("PNG", 8), ("PNG", 16), ("JPEG", 8), ("WEBP", 8), ("TIFF", 8), ("TIFF", 16)])
def test_icc_xmp_exif_survive_write_and_read(tmp_path: Path, photo16: np.ndarray, fmt: str, depth: int) -> None:
    path = tmp_path / f"m.{fmt.lower()}"
    write_image(path, photo16, None, fmt=fmt, bit_depth=depth, exif=_exif(1), xmp=XMP, icc_profile=SRGB)
    img = read_image(path)
    assert img.icc_profile == SRGB  # byte-exact
    assert img.xmp is not None and img.xmp.strip(b"\0 \n").endswith(b"</x:xmpmeta>")
    exif = Image.Exif()
    exif.load(img.exif)
    assert exif[0x010F] == "RibsrCam"
    with Image.open(path) as im:  # an independent reader sees the same profile
        assert im.info.get("icc_profile") == SRGB


def test_icc_profile_read_byte_exact_and_pixels_untouched(tmp_path: Path, photo: np.ndarray) -> None:
    """A wide-gamut profile stays attached; the pixels are not converted to sRGB."""
    wide = bytearray(SRGB)
    wide[-4:] = b"WIDE"  # a different profile, byte-wise
    Image.fromarray(photo).save(tmp_path / "w.png", icc_profile=bytes(wide))
    img = read_image(tmp_path / "w.png")
    assert img.icc_profile == bytes(wide)
    np.testing.assert_array_equal(img.pixels, photo)


def test_rgb_profile_on_grey_output_is_dropped_with_warning(tmp_path: Path, photo: np.ndarray) -> None:
    notes = write_image(tmp_path / "g.png", _grey(photo), None, fmt="PNG", bit_depth=8, icc_profile=SRGB)
    assert any("ICC" in n for n in notes)
    assert read_image(tmp_path / "g.png").icc_profile is None


@pytest.mark.parametrize("fmt,depth", [("PNG", 8), ("PNG", 16), ("JPEG", 8), ("TIFF", 8), ("TIFF", 16), ("BMP", 8)])
@pytest.mark.parametrize("dpi", [(300.0, 300.0), (72.0, 144.0)])
def test_dpi_round_trip(tmp_path: Path, photo: np.ndarray, fmt: str, depth: int, dpi: tuple[float, float]) -> None:
    path = tmp_path / f"d.{fmt.lower()}"
    write_image(path, photo, None, fmt=fmt, bit_depth=depth, dpi=dpi)
    assert read_image(path).dpi == dpi


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_broken_exif_warns_and_is_dropped(tmp_path: Path, photo: np.ndarray, fmt: str) -> None:
    path = tmp_path / f"b.{fmt.lower()}"
    Image.fromarray(photo).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff" + b"\x13" * 40)
    img = read_image(path)
    assert img.exif is None
    assert any("EXIF" in w for w in img.warnings)
    assert img.pixels.shape == photo.shape


@pytest.mark.parametrize("depth", [8, 16])
def test_tiff_keeps_full_exif_with_sub_ifds(tmp_path: Path, photo16: np.ndarray, depth: int) -> None:
    exif_in = Image.Exif()
    exif_in.load(_exif(1))
    exif_in[0x8825] = {1: "N", 2: (52.0, 30.0, 0.0)}  # GPS IFD too
    assert write_image(tmp_path / "e.tif", photo16, None, fmt="TIFF", bit_depth=depth, exif=exif_in.tobytes()) == []
    exif = Image.Exif()
    exif.load(read_image(tmp_path / "e.tif").exif)
    assert exif[0x010F] == "RibsrCam"
    assert 0x829A in exif.get_ifd(0x8769) and exif.get_ifd(0x8825)[1] == "N"
    with tifffile.TiffFile(tmp_path / "e.tif") as tif:  # an independent reader follows the pointers too
        assert "ExposureTime" in tif.pages[0].tags["ExifTag"].value
        np.testing.assert_array_equal(tif.asarray(), photo16 if depth == 16 else ((photo16.astype(np.uint32) + 128) // 257))


# --- multi-frame ---------------------------------------------------------------------------


def test_animated_gif_first_frame_and_warning(tmp_path: Path, photo: np.ndarray) -> None:
    frames = [Image.fromarray(photo).quantize(64), Image.fromarray(255 - photo).quantize(64)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    img = read_image(tmp_path / "a.gif")
    assert img.format == "GIF" and img.n_frames == 2
    assert any("first" in w for w in img.warnings)
    np.testing.assert_array_equal(img.pixels, np.asarray(frames[0].convert("RGB")))


@pytest.mark.parametrize("depth", [8, 16])
def test_multipage_tiff_first_page_and_warning(tmp_path: Path, photo16: np.ndarray, depth: int) -> None:
    first = photo16 if depth == 16 else (photo16 >> 8).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "m.tif") as tif:
        tif.write(first, photometric="rgb")
        tif.write(first[::-1].copy(), photometric="rgb")
    img = read_image(tmp_path / "m.tif")
    assert img.n_frames == 2 and any("first" in w for w in img.warnings)
    np.testing.assert_array_equal(img.pixels, first)


# --- bad input: always one clean ImageReadError line ----------------------------------------


def _bomb_png(width: int, height: int, depth: int = 8) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [8, 16])
def test_decompression_bomb_header_fails_fast(tmp_path: Path, depth: int) -> None:
    (tmp_path / "bomb.png").write_bytes(_bomb_png(100_000, 100_000, depth))
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match="limit") as info:
        read_image(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 2.0  # refused from the header, nothing decoded
    assert str(info.value).startswith(str(tmp_path / "bomb.png") + ": ") and "\n" not in str(info.value)


def test_small_max_pixels_is_honoured_and_pillow_limit_never_wins(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="limit"):
        read_image(tmp_path / "x.png", max_pixels=1000)
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 100  # Pillow alone would refuse this photo as a bomb
        assert read_image(tmp_path / "x.png").pixels.shape == photo.shape
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_tiff_bomb_header_fails_fast(tmp_path: Path, photo16: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "t.tif", photo16, photometric="rgb")
    for tag in (256, 257):  # ImageWidth, ImageLength -> 60000
        _patch_tiff_tag(tmp_path / "t.tif", tag, 60000)
    with pytest.raises(ImageReadError, match="limit"):
        read_image(tmp_path / "t.tif", max_pixels=10_000_000)


def test_zlib_bomb_in_16bit_png_is_refused(tmp_path: Path) -> None:
    """A 64x64 header with an IDAT that inflates to 64 MB must not reach pypng's one-shot inflate."""
    ihdr = struct.pack(">IIBBBBB", 64, 64, 16, 2, 0, 0, 0)
    payload = zlib.compress(b"\0" * (64 << 20), 9)
    (tmp_path / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", payload)
                                     + png_chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match="inflates"):
        read_image(tmp_path / "z.png")


@pytest.mark.parametrize("kind", ["missing", "empty", "folder", "text", "random", "half_png", "half_jpeg",
                                  "half_tiff16", "half_png16", "header_only"])
def test_bad_files_raise_one_line_read_error(tmp_path: Path, photo: np.ndarray, photo16: np.ndarray, kind: str) -> None:
    path = tmp_path / f"bad_{kind}"
    if kind == "folder":
        path.mkdir()
    elif kind != "missing":
        path.write_bytes(_bad_bytes(kind, photo, photo16))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text and info.value.reason


def _bad_bytes(kind: str, photo: np.ndarray, photo16: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if kind == "text":
        return b"just some notes, not a picture\n" * 10
    if kind == "random":
        return np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind in ("half_png", "header_only"):
        Image.fromarray(photo).save(buf, "PNG")
        return buf.getvalue()[: 40 if kind == "header_only" else buf.tell() // 2]
    if kind == "half_jpeg":
        Image.fromarray(photo).save(buf, "JPEG")
        return buf.getvalue()[: buf.tell() // 2]
    if kind == "half_tiff16":
        tifffile.imwrite(buf, photo16, photometric="rgb")
        return buf.getvalue()[: buf.tell() // 2]
    if kind == "half_png16":
        png.from_array(photo16.reshape(photo16.shape[0], -1), "RGB;16").write(buf)
        return buf.getvalue()[: buf.tell() // 2]
    return b""


# --- atomic writes ---------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_successful_write_leaves_no_temp_file(tmp_path: Path, photo: np.ndarray) -> None:
    write_image(tmp_path / "ok.png", photo, None, fmt="PNG", bit_depth=8)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]


@pytest.mark.parametrize("fmt,depth", [("PNG", 16), ("PNG", 8), ("TIFF", 16)])
def test_failure_mid_write_leaves_nothing_behind(tmp_path: Path, photo16: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                                 fmt: str, depth: int) -> None:
    """The encoder dies after writing part of the file: no partial output, no temp file, old file intact."""
    target = tmp_path / "out.img"
    target.write_bytes(b"previous result")
    real = io_write._ENCODERS[fmt]

    def dies_half_way(f, out):  # type: ignore[no-untyped-def]
        real(f, out)
        f.seek(f.tell() // 2)
        f.truncate()
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(io_write._ENCODERS, fmt, dies_half_way)
    with pytest.raises(ImageWriteError, match="No space left") as info:
        write_image(target, photo16, None, fmt=fmt, bit_depth=depth)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{target}: ")
    assert target.read_bytes() == b"previous result"
    assert _leftovers(tmp_path) == []


def test_failed_rename_removes_temp_file(tmp_path: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileutil.os, "replace", refuse)
    with pytest.raises(ImageWriteError, match="Permission denied"):
        write_image(tmp_path / "x.jpg", photo, None, fmt="JPEG", bit_depth=8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["float_pixels", "four_channels", "bad_alpha", "bad_depth", "bad_format",
                                  "missing_folder", "webp_too_wide"])
def test_write_rejects_bad_requests_cleanly(tmp_path: Path, photo: np.ndarray, case: str) -> None:
    path = tmp_path / ("nope" if case == "missing_folder" else "") / "x.out"
    kwargs: dict = {"fmt": "PNG", "bit_depth": 8}
    pixels, alpha = photo, None
    if case == "float_pixels":
        pixels = photo.astype(np.float32)
    elif case == "four_channels":
        pixels = np.dstack([photo, photo[..., 0]])
    elif case == "bad_alpha":
        alpha = np.zeros((3, 3), np.uint8)
    elif case == "bad_depth":
        kwargs["bit_depth"] = 12
    elif case == "bad_format":
        kwargs["fmt"] = "GIF"
    elif case == "webp_too_wide":
        pixels, kwargs["fmt"] = np.zeros((1, 16_384, 3), np.uint8), "WEBP"
    with pytest.raises(ImageWriteError) as info:
        write_image(path, pixels, alpha, **kwargs)
    assert "\n" not in str(info.value)
    assert not path.exists() and (not path.parent.exists() or _leftovers(path.parent) == [])


# --- helpers for the upscaler ---------------------------------------------------------------


def test_float_round_trip_is_exact_for_every_value() -> None:
    for dtype, depth in ((np.uint8, 8), (np.uint16, 16)):
        values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype).reshape(-1, 1, 1)
        as_float = to_float(values)
        assert as_float.dtype == np.float32 and as_float.min() == 0.0 and as_float.max() == 1.0
        np.testing.assert_array_equal(from_float(as_float, depth), values)


def test_from_float_clips_rounds_and_cleans_nan() -> None:
    arr = np.array([-0.5, 0.0, 0.5 / 255, 0.49 / 255, 1.2, np.nan, np.inf], dtype=np.float32)
    np.testing.assert_array_equal(from_float(arr, 8), [0, 0, 0, 0, 255, 0, 255])
    assert from_float(np.array([0.5]), 16).dtype == np.uint16
    with pytest.raises(ValueError):
        from_float(arr, 10)


def test_to_rgb_and_grey_like(photo: np.ndarray) -> None:
    grey = _grey(photo)[..., None]
    rgb = to_rgb(grey)
    assert rgb.shape == (*grey.shape[:2], 3) and np.shares_memory(rgb, grey)  # a view, not a copy
    np.testing.assert_array_equal(grey_like(rgb, grey), grey)
    np.testing.assert_array_equal(grey_like(to_rgb(grey[..., 0]), grey[..., 0]), grey[..., 0])  # 2-D stays 2-D
    uneven = rgb.astype(np.int16) + np.array([-3, 0, 3], dtype=np.int16)
    np.testing.assert_array_equal(grey_like(uneven, grey), grey.astype(np.int16))  # mean of the three
    uneven[..., 2] += 1  # mean lands on .33: rounds down
    np.testing.assert_array_equal(grey_like(uneven, grey), grey.astype(np.int16))
    assert grey_like(photo, photo) is photo and to_rgb(photo) is photo
    assert grey_like(to_float(rgb), grey).dtype == np.float32
    with pytest.raises(ValueError):
        to_rgb(np.zeros((4, 4, 2), np.uint8))


def test_from_float_writes_into_a_view() -> None:
    out = np.zeros((4, 6), np.uint16)
    values = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    from_float(values, 16, out=out[1:3, 1:5])
    np.testing.assert_array_equal(out[1:3, 1:5], np.rint(values * 65535).astype(np.uint16))
    assert out[0].sum() == 0 and out[:, 0].sum() == 0 and out[:, 5].sum() == 0
    assert to_float(values).dtype == np.float32 and np.array_equal(to_float(values), values)  # floats pass through
    with pytest.raises(TypeError):
        to_float(np.zeros(3, np.int32))


@pytest.mark.parametrize("source,requested,expected", [
    ("JPEG", "keep", ("JPEG", ".jpg")), ("PNG", "keep", ("PNG", ".png")), ("TIFF", "keep", ("TIFF", ".tif")),
    ("WEBP", "keep", ("WEBP", ".webp")), ("BMP", "keep", ("BMP", ".bmp")), ("GIF", "keep", ("PNG", ".png")),
    ("PPM", "keep", ("PNG", ".png")), ("PGM", "keep", ("PNG", ".png")),
    ("JPEG", "png", ("PNG", ".png")), ("PNG", "jpg", ("JPEG", ".jpg")), ("BMP", "tiff", ("TIFF", ".tif")),
    ("TIFF", "webp", ("WEBP", ".webp")),
])
def test_output_format_for(source: str, requested: str, expected: tuple[str, str]) -> None:
    assert output_format_for(source, requested) == expected


def test_output_format_for_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        output_format_for("PNG", "gif")


@pytest.mark.parametrize("name,ok", [("a.JPG", True), ("b.jpeg", True), ("c.Png", True), ("d.TIF", True),
                                     ("e.tiff", True), ("f.webp", True), ("g.BMP", True), ("h.gif", True),
                                     ("l.PPM", True), ("m.pgm", True), ("i.txt", False), ("jpg", False),
                                     ("k.png.bak", False), ("n.svg", False)])
def test_is_image_path(name: str, ok: bool) -> None:
    assert is_image_path(Path("folder") / name) is ok


# --- one list of what ribsr reads ------------------------------------------------------------


def _pillow_format(suffix: str) -> str:
    return Image.registered_extensions()[suffix]


@pytest.mark.parametrize("suffix", sorted(IMAGE_EXTENSIONS))
def test_every_listed_suffix_reads_a_real_photo(tmp_path: Path, suffix: str) -> None:
    """A real photo saved by Pillow under each listed suffix reads back with the pixels Pillow itself decodes;
    lossless formats give the very pixels that were saved."""
    fmt = _pillow_format(suffix)
    with Image.open(EXAMPLES / "chelsea.png") as im:
        source = im.convert("L" if suffix == ".pgm" else "RGB").crop((100, 60, 228, 156))
    path = tmp_path / f"cat{suffix}"
    try:
        source.save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    except (KeyError, OSError) as exc:  # this Pillow has no encoder for it
        pytest.skip(f"Pillow cannot write {fmt}: {exc}")
    loaded = read_image(path)
    with Image.open(path) as im:
        pillow = np.asarray(im.convert(source.mode))
    assert loaded.pixels.shape[:2] == (96, 128) and loaded.bit_depth == 8
    np.testing.assert_array_equal(loaded.pixels.reshape(pillow.shape), pillow)
    if fmt not in ("JPEG", "GIF"):  # lossless: exactly what was saved
        np.testing.assert_array_equal(loaded.pixels.reshape(pillow.shape), np.asarray(source))


def test_listed_suffixes_are_the_formats_the_reader_decodes() -> None:
    from ribsr_cli.imaging.io_read import READ_FORMATS

    listed = {_pillow_format(s) for s in IMAGE_EXTENSIONS}
    assert listed == set(READ_FORMATS)


def test_16_bit_pgm_reads_exactly_and_16_bit_ppm_says_it_is_cut(tmp_path: Path) -> None:
    with Image.open(EXAMPLES / "astronaut.png") as im:
        grey = np.asarray(im.convert("L").crop((0, 0, 64, 48))).astype(np.uint16) * 257 + 3
    pgm = tmp_path / "grey16.pgm"
    pgm.write_bytes(b"P5\n# written by a test\n64 48\n65535\n" + grey.astype(">u2").tobytes())
    loaded = read_image(pgm)
    assert loaded.bit_depth == 16 and loaded.warnings == []
    np.testing.assert_array_equal(loaded.pixels[..., 0], grey)
    ppm = tmp_path / "colour16.ppm"
    rgb = np.dstack([grey, grey, grey])
    ppm.write_bytes(b"P6\n64 48\n65535\n" + rgb.astype(">u2").tobytes())
    loaded = read_image(ppm)
    assert loaded.bit_depth == 8 and any("decoded at 8 bits" in w for w in loaded.warnings)


def test_folder_scans_of_every_command_take_the_same_files(tmp_path: Path) -> None:
    """upscale's inputs, eval's benchmark sets, training photos and the leak check pick the same files."""
    from ribsr_cli.evaluation import discover_dataset
    from ribsr_cli.training.leakcheck import benchmark_files
    from ribsr_cli.training.prepare import find_photos
    from ribsr_cli.upscaling import plan_jobs

    folder = tmp_path / "HR"
    folder.mkdir()
    with Image.open(EXAMPLES / "coffee.png") as im:
        crop = im.convert("RGB").crop((0, 0, 64, 48))
    for name in ("a.png", "b.PGM", "c.gif", "d.ppm", "e.jpeg"):
        crop.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "f.svg").write_text("<svg/>")
    expected = ["a.png", "b.PGM", "c.gif", "d.ppm", "e.jpeg"]
    assert [p.name for p in discover_dataset(folder).hr_files] == expected
    assert [p.name for p in find_photos(folder)] == expected
    assert [p.name for p in benchmark_files(folder)] == expected
    jobs = plan_jobs([str(folder)], tmp_path / "out", recursive=False, template="{stem}_x{scale}",
                     scale="2", model="m", fmt="keep", overwrite=False)
    assert sorted(j.source.name for j in jobs) == expected
    assert sorted(j.output.name for j in jobs) == ["a_x2.png", "b_x2.png", "c_x2.png", "d_x2.png", "e_x2.jpg"]
