"""`ribsr upscale` end to end: real photo crops through the CLI, every promise of the product issue.

Inputs are small crops (48x40 and up) of the public-domain/CC0 photos in
`examples/`, written in tmp_path in every format and mode. The model is a
random-init ribsr-s-x2 saved as a checkpoint once per session. Format details of
the reader/writer themselves are tests/test_image_io.py's job, tiled inference
(plan, out-of-memory retry, tiled = untiled) tests/test_tiling.py's; here they
are checked only as the CLI delivers them.
"""

from __future__ import annotations

import errno
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from ribsr_cli import upscaling
from ribsr_cli.imaging import io_write
from ribsr_cli.imaging.io import read_image, write_image
from conftest import EXAMPLES, coffee, crop, upscale


pytestmark = pytest.mark.usefixtures("one_thread")
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="ribsr-test"/>'
       b"</rdf:RDF></x:xmpmeta>")


# --- fixtures and helpers --------------------------------------------------------------------


def one_line(text: str) -> str:
    return " ".join(text.split())


def pixels(path: Path) -> np.ndarray:
    """Decoded colour samples as float64 (the reader is tested elsewhere)."""
    return read_image(path).pixels.astype(np.float64)


def down2(arr: np.ndarray) -> np.ndarray:
    """2x2 box average: an x2 output back on the input grid, to compare content."""
    h, w = arr.shape[0] // 2, arr.shape[1] // 2
    return arr[: 2 * h, : 2 * w].reshape(h, 2, w, 2, -1).mean(axis=(1, 3))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


# --- every format and mode -------------------------------------------------------------------

# sample name: (extension in and out, colour channels, has alpha, bit depth, Pillow format of the output)
FORMATS = {
    "jpeg_rgb": (".jpg", 3, False, 8, "JPEG"),
    "jpeg_grey": (".jpg", 1, False, 8, "JPEG"),
    "jpeg_cmyk": (".jpg", 3, False, 8, "JPEG"),
    "png_rgb": (".png", 3, False, 8, "PNG"),
    "png_rgba": (".png", 3, True, 8, "PNG"),
    "png_la": (".png", 1, True, 8, "PNG"),
    "png_p": (".png", 3, False, 8, "PNG"),
    "png_p_trns": (".png", 3, True, 8, "PNG"),
    "png16_rgb": (".png", 3, False, 16, "PNG"),
    "png16_grey": (".png", 1, False, 16, "PNG"),
    "tiff8": (".tif", 3, False, 8, "TIFF"),
    "tiff16": (".tif", 3, False, 16, "TIFF"),
    "webp": (".webp", 3, False, 8, "WEBP"),
    "bmp": (".bmp", 3, False, 8, "BMP"),
}


def _write_sample(folder: Path, name: str, rgb: Image.Image) -> Path:
    arr = np.asarray(rgb)
    ramp_alpha = Image.fromarray(np.tile(np.linspace(0, 255, arr.shape[1]).astype(np.uint8), (arr.shape[0], 1)))
    rng = np.random.default_rng(7)
    arr16 = arr.astype(np.uint16) * 256 + rng.integers(0, 256, arr.shape, dtype=np.uint16)
    path = folder / f"{name}{FORMATS[name][0]}"
    if name == "jpeg_rgb":
        rgb.save(path, quality=95)
    elif name == "jpeg_grey":
        rgb.convert("L").save(path, quality=95)
    elif name == "jpeg_cmyk":
        rgb.convert("CMYK").save(path, quality=95)
    elif name == "png_rgb":
        rgb.save(path)
    elif name == "png_rgba":
        im = rgb.copy()
        im.putalpha(ramp_alpha)
        im.save(path)
    elif name == "png_la":
        im = rgb.convert("L")
        im.putalpha(ramp_alpha)
        im.save(path)
    elif name == "png_p":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif name == "png_p_trns":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=255).save(path, transparency=0)
    elif name == "png16_rgb":
        write_image(path, arr16, fmt="PNG", bit_depth=16)
    elif name == "png16_grey":
        Image.fromarray(arr16[..., 1]).save(path)  # Pillow writes I;16 as a 16-bit grey PNG
    elif name == "tiff8":
        rgb.save(path)
    elif name == "tiff16":
        tifffile.imwrite(path, arr16, photometric="rgb")
    elif name == "webp":
        rgb.save(path, quality=95)
    elif name == "bmp":
        rgb.save(path)
    return path


@pytest.fixture(scope="module")
def format_batch(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[Path, Path, dict]:
    """One batch over a folder holding every format/mode; (source folder, output folder, JSON report)."""
    root = tmp_path_factory.mktemp("formats")
    src, out = root / "src", root / "out"
    src.mkdir()
    for name in FORMATS:
        _write_sample(src, name, coffee())
    result = upscale(model_path, src, "-o", out, "--json", root / "report.json", "--tile", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((root / "report.json").read_text())
    return src, out, {Path(f["input"]).stem: f for f in report["files"]}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_and_mode_gives_the_right_output(format_batch: tuple[Path, Path, dict], name: str) -> None:
    src, out, report = format_batch
    ext, channels, has_alpha, depth, pil_format = FORMATS[name]
    entry = report[name]
    assert entry["status"] == "done" and entry["error"] is None
    target = out / f"{name}_x2{ext}"
    assert Path(entry["output"]) == target.resolve() and target.is_file()
    assert entry["input_size"] == [48, 40] and entry["output_size"] == [96, 80]
    with Image.open(target) as im:
        assert im.format == pil_format and im.size == (96, 80)
    img = read_image(target)
    assert img.pixels.shape == (80, 96, channels)
    assert (img.alpha is not None) == has_alpha
    assert img.bit_depth == depth and img.pixels.dtype == (np.uint16 if depth == 16 else np.uint8)
    if depth == 16:  # real 16-bit samples, not 8-bit values stored wide
        assert np.any(img.pixels % 257 != 0)
    # the picture is the input's picture (a CMYK or palette mix-up would decorrelate or invert it)
    source = read_image(src / f"{name}{ext}")
    scale = 257.0 if depth == 16 else 1.0
    assert correlation(down2(img.pixels / scale), source.pixels / scale) > 0.6
    if has_alpha:
        assert correlation(down2(img.alpha[..., None] / scale), source.alpha / scale) > 0.9
    if name == "jpeg_cmyk":
        assert any("CMYK" in w for w in entry["warnings"])


# --- metadata: orientation, EXIF, ICC, XMP, DPI ----------------------------------------------


def test_exif_rotation_is_applied_and_metadata_carried(tmp_path: Path, model_path: Path) -> None:
    """Output looks like the input in a viewer; EXIF/ICC/XMP travel; DPI doubles so the print size stays."""
    with Image.open(EXAMPLES / "astronaut.png") as im:
        icc = im.info["icc_profile"]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    exif[0x010F] = "RibsrTestCam"
    src = tmp_path / "src"
    src.mkdir()
    coffee(48, 40).save(src / "turned.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc, dpi=(300, 300), xmp=XMP)
    with Image.open(src / "turned.jpg") as im:
        ImageOps.exif_transpose(im).save(src / "upright.png")  # what a viewer shows, as plain pixels
    result = upscale(model_path, src / "turned.jpg", src / "upright.png", "-o", tmp_path / "out", "--tile", "0",
                     "--format", "png", "--name", "{stem}")
    assert result.exit_code == 0, result.output
    turned, upright = tmp_path / "out" / "turned.png", tmp_path / "out" / "upright.png"
    np.testing.assert_array_equal(pixels(turned), pixels(upright))  # same pixels went through the network
    with Image.open(turned) as im:
        assert im.size == (80, 96)  # 40x48 upright, doubled
        assert im.info["icc_profile"] == icc
        assert im.info["dpi"] == pytest.approx((600, 600), abs=0.1)
        out_exif = im.getexif()
        assert out_exif.get(0x0112, 1) == 1  # rotation is in the pixels now
        assert out_exif.get(0x010F) == "RibsrTestCam"
        assert b"ribsr-test" in (im.info.get("xmp") or im.info.get("XML:com.adobe.xmp", "").encode())
    # JPEG to JPEG keeps the same facts in its own containers
    result = upscale(model_path, src / "turned.jpg", "-o", tmp_path / "jpg", "--tile", "0")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "jpg" / "turned_x2.jpg") as im:
        assert im.size == (80, 96) and im.info["icc_profile"] == icc and im.info["dpi"] == (600, 600)
        assert im.getexif().get(0x0112, 1) == 1 and b"ribsr-test" in im.info["xmp"]


def test_alpha_has_no_dark_fringe_at_transparent_edges(tmp_path: Path, model_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Black colour hidden under alpha 0 must not bleed into the visible side of the edge."""
    rgb = np.asarray(coffee(64, 48))
    hidden = rgb.copy()
    hidden[:, 32:] = 0
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, 32:] = 0
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(rgb).save(src / "opaque.png")
    Image.fromarray(np.dstack([hidden, alpha])).save(src / "cutout.png")

    def edge_error(out: Path) -> float:
        assert upscale(model_path, src, "-o", out, "--tile", "0").exit_code == 0
        cut, opaque = read_image(out / "cutout_x2.png"), read_image(out / "opaque_x2.png")
        assert cut.alpha is not None and cut.alpha[:, :56].min() >= 250 and cut.alpha[:, 72:].max() <= 5
        near = slice(52, 64)  # the last 6 visible input columns, upscaled
        return float(np.abs(cut.pixels[:, near].astype(float) - opaque.pixels[:, near]).mean())

    assert edge_error(tmp_path / "out") < 4.0
    # the check has teeth: without the fill, the hidden black shows as a dark fringe
    monkeypatch.setattr(upscaling, "fill_transparent", lambda colour, _alpha: colour)
    assert edge_error(tmp_path / "unfilled") > 12.0


# --- batch planning: recursion, resume, clashes, safety --------------------------------------


def _tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    coffee().save(root / "top.png")
    coffee().save(root / "sub" / "mid.jpg", quality=95)
    coffee().save(root / "sub" / "deeper" / "low.png")
    (root / "notes.txt").write_text("not a photo")
    (root / "sub" / "data.json").write_text("{}")
    return root


def test_recursive_mirrors_the_tree_and_skips_non_images_silently(tmp_path: Path, model_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    result = upscale(model_path, "-r", tree, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    made = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert made == ["sub/deeper/low_x2.png", "sub/mid_x2.jpg", "top_x2.png"]
    assert "notes" not in result.output and "data.json" not in result.output
    flat = upscale(model_path, tree, "-o", tmp_path / "flat")
    assert flat.exit_code == 0
    assert [p.name for p in (tmp_path / "flat").iterdir()] == ["top_x2.png"]


def test_output_inside_the_input_tree_is_never_reprocessed(tmp_path: Path, model_path: Path) -> None:
    """Re-running must resume, whether inputs come as a folder walk or a recursive glob."""
    tree = _tree(tmp_path / "tree")
    out = tree / "upscaled"
    assert upscale(model_path, "-r", tree, "-o", out).exit_code == 0
    again = upscale(model_path, "-r", tree, "-o", out, "--json", tmp_path / "r.json")
    assert again.exit_code == 0
    assert {f["status"] for f in json.loads((tmp_path / "r.json").read_text())["files"]} == {"skipped"}
    glob = upscale(model_path, "-r", f"{tree}/**/*.png", "-o", out, "--json", tmp_path / "g.json")
    assert glob.exit_code == 0, glob.output
    files = json.loads((tmp_path / "g.json").read_text())["files"]  # mirrored from the pattern's fixed folder
    assert sorted((Path(f["input"]).name, f["status"]) for f in files) == [("low.png", "skipped"), ("top.png", "skipped")]
    assert not list(out.rglob("*_x2_x2*"))


def test_existing_outputs_are_skipped_and_overwrite_redoes_them(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    coffee().save(src / "a.png")
    crop("astronaut.png", (200, 100, 248, 140)).save(src / "b.png")
    out = tmp_path / "out"
    assert upscale(model_path, src, "-o", out).exit_code == 0
    (out / "b_x2.png").unlink()
    (out / "a_x2.png").write_bytes(b"marker: must survive a resume")
    resumed = upscale(model_path, src, "-o", out, "--json", tmp_path / "r.json")
    assert resumed.exit_code == 0
    status = {Path(f["input"]).name: f["status"] for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert status == {"a.png": "skipped", "b.png": "done"}
    assert (out / "a_x2.png").read_bytes() == b"marker: must survive a resume" and (out / "b_x2.png").is_file()
    finished = upscale(None, src, "-o", out, "-q", "-m", tmp_path / "gone.safetensors")  # nothing to do: no model needed
    assert finished.exit_code == 0 and "0 done, 2 skipped, 0 failed" in one_line(finished.output)
    redo = upscale(model_path, src, "-o", out, "--overwrite")
    assert redo.exit_code == 0
    assert read_image(out / "a_x2.png").pixels.shape == (80, 96, 3)


def test_two_inputs_with_one_output_name_are_reported_not_clobbered(tmp_path: Path, model_path: Path) -> None:
    for folder, image in (("d1", coffee()), ("d2", crop("astronaut.png", (200, 100, 248, 140)))):
        (tmp_path / folder).mkdir()
        image.save(tmp_path / folder / "x.png")
    both = upscale(model_path, tmp_path / "d1" / "x.png", tmp_path / "d2" / "x.png", "-o", tmp_path / "out")
    assert both.exit_code == 1
    assert "clash" in one_line(both.output) and str(tmp_path / "d2" / "x.png") in one_line(both.output)
    alone = upscale(model_path, tmp_path / "d1" / "x.png", "-o", tmp_path / "ref")
    assert alone.exit_code == 0, alone.output
    assert (tmp_path / "out" / "x_x2.png").read_bytes() == (tmp_path / "ref" / "x_x2.png").read_bytes()
    # the same file named twice (and through its folder) is one job, not a clash
    twice = upscale(model_path, tmp_path / "d1" / "x.png", tmp_path / "d1" / "x.png", tmp_path / "d1",
                    "-o", tmp_path / "twice")
    assert twice.exit_code == 0, twice.output


def test_an_input_is_never_overwritten(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    coffee().save(src / "a.png")
    before = (src / "a.png").read_bytes()
    same_name = upscale(model_path, src / "a.png", "-o", src, "--name", "{stem}")
    assert same_name.exit_code == 1 and "overwrite an input" in one_line(same_name.output)
    same_folder = upscale(model_path, src, "-o", src)
    assert same_folder.exit_code == 2 and "output folder is the input folder" in one_line(same_folder.output)
    assert (src / "a.png").read_bytes() == before and sorted(p.name for p in src.iterdir()) == ["a.png"]


@pytest.mark.parametrize("template", ["../x", "../{stem}", "/tmp/ribsr-escape-{stem}", "sub/../../{stem}"])
def test_a_name_template_cannot_leave_the_output_folder(tmp_path: Path, model_path: Path, template: str) -> None:
    coffee().save(tmp_path / "a.png")
    out = tmp_path / "deep" / "out"
    result = upscale(model_path, tmp_path / "a.png", "-o", out, "--name", template)
    assert result.exit_code == 2 and "outside the output folder" in one_line(result.output)
    assert not (tmp_path / "deep").exists() and not list(tmp_path.glob("x*"))


def test_model_in_the_name_is_the_model_that_runs_not_the_alias(tmp_path: Path, model_path: Path) -> None:
    """{model} is the name the registry gives the weights (`-m real` runs ribsr-s-real-x2; a file: its
    stem), the same name the report records, and it is known before any weights are read (dry run)."""
    from ribsr_cli.catalog import variant_model

    coffee().save(tmp_path / "a.png")
    from_file = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "file", "--name", "{stem}_{model}")
    assert from_file.exit_code == 0 and (tmp_path / "file" / f"a_{model_path.stem}.png").is_file()
    real = variant_model("real", 2)
    if real is None:
        pytest.skip("no shipped real x2 model")
    dry = upscale(None, tmp_path / "a.png", "-o", tmp_path / "out", "-m", "real", "--name", "{stem}_{model}",
                  "--dry-run")
    assert dry.exit_code == 0 and f"a_{real.name}.png" in one_line(dry.output)
    result = upscale(None, tmp_path / "a.png", "-o", tmp_path / "out", "-m", "real", "--name", "{stem}_{model}",
                     "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"a_{real.name}.png"]  # not a_real.png
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == real.name and report["model_sha256"] == real.sha256


def test_dry_run_writes_nothing(tmp_path: Path, model_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    out = tmp_path / "out"
    result = upscale(model_path, "-r", tree, "-o", out, "--dry-run", "--json", tmp_path / "r.json")
    assert result.exit_code == 0
    assert one_line(result.output).count("would write") == 3 and "mid_x2.jpg" in result.output
    assert not out.exists() and not (tmp_path / "r.json").exists()
    (tmp_path / "notes.txt").write_text("named, so an error")
    planned_failure = upscale(model_path, tree, tmp_path / "notes.txt", "-o", out, "--dry-run")
    assert planned_failure.exit_code == 1 and "notes.txt" in planned_failure.output and not out.exists()


# --- failures: each file fails alone, in one line --------------------------------------------


def _bomb_png(path: Path) -> None:
    """A valid 100000x100000 PNG header over a few bytes of data: 10 gigapixels if anyone believed it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_bad_files_fail_alone_with_one_line_each(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    coffee().save(src / "good.png")
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("hello, I am not a JPEG")
    whole = (EXAMPLES / "rocket.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    png_bytes = (EXAMPLES / "coffee.png").read_bytes()
    (src / "truncated.png").write_bytes(png_bytes[: len(png_bytes) // 2])
    _bomb_png(src / "bomb.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("a named non-image file is an error for that file")
    result = upscale(model_path, src, notes, tmp_path / "missing.png", "-o", tmp_path / "out",
                     "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    for name, reason in [("empty.png", "empty file"), ("text.jpg", "not a supported image"),
                         ("truncated.jpg", "truncated"), ("truncated.png", "truncated"), ("bomb.png", "pixel limit"),
                         ("notes.txt", "not a supported image type"), ("missing.png", "no such file")]:
        assert any(f"{name}: " in line and reason in line for line in lines), (name, result.output)
    report = {Path(f["input"]).name: f for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert report["good.png"]["status"] == "done" and (tmp_path / "out" / "good_x2.png").is_file()
    assert all(f["status"] == "failed" and f["error"] for n, f in report.items() if n != "good.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_x2.png"]


def test_max_pixels_refuses_a_large_image(tmp_path: Path, model_path: Path) -> None:
    coffee().save(tmp_path / "a.png")  # 48x40 = 1920 pixels
    result = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "out", "--max-pixels", "1000")
    assert result.exit_code == 1 and "1,000-pixel limit" in one_line(result.output)


def test_a_failure_mid_write_leaves_no_output_and_the_batch_goes_on(tmp_path: Path, model_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    coffee().save(src / "a.png")
    coffee().save(src / "b.png")
    real_png, calls = io_write._ENCODERS["PNG"], []

    def disk_full_once(f, out) -> None:
        calls.append(1)
        if len(calls) == 1:
            f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)  # half a file on disk ...
            raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk fills
        real_png(f, out)

    monkeypatch.setitem(io_write._ENCODERS, "PNG", disk_full_once)
    out = tmp_path / "out"
    result = upscale(model_path, src, "-o", out)
    assert result.exit_code == 1
    assert "a.png: cannot write it (No space left on device)" in one_line(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["b_x2.png"] and no_temp_files(out)
    assert read_image(out / "b_x2.png").pixels.shape == (80, 96, 3)


def test_unwritable_output_folder(tmp_path: Path, model_path: Path) -> None:
    """Root ignores permissions, so 'unwritable' is a folder path running through a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    coffee().save(tmp_path / "a.png")
    whole = upscale(model_path, tmp_path / "a.png", "-o", blocker / "out")
    assert whole.exit_code == 2 and "cannot create the output folder" in one_line(whole.output)
    # a mirrored sub-folder that cannot be made is found before any work (issue 18): nothing is written
    tree = _tree(tmp_path / "tree")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("in the way")
    partial = upscale(model_path, "-r", tree, "-o", out)
    assert partial.exit_code == 2
    assert "sub" in partial.output and "cannot create the output folder" in one_line(partial.output)
    assert not (out / "top_x2.png").exists() and no_temp_files(out)


def _three_photos(src: Path) -> None:
    src.mkdir()
    for name in ("a", "b", "c"):
        coffee().save(src / f"{name}.png")


def test_ctrl_c_during_a_file_leaves_no_partial_output(tmp_path: Path, model_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _three_photos(tmp_path / "src")
    real, seen = upscaling.process, []

    def interrupted_on_second(job, *args, **kwargs):
        seen.append(job.source.name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(job, *args, **kwargs)

    monkeypatch.setattr(upscaling, "process", interrupted_on_second)
    out = tmp_path / "out"
    result = upscale(model_path, tmp_path / "src", "-o", out, "--json", tmp_path / "r.json")
    assert result.exit_code == 130
    assert "interrupted" in result.output and "1 file(s) finished and kept, 1 not started" in one_line(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png"]
    status = [f["status"] for f in json.loads((tmp_path / "r.json").read_text())["files"]]
    assert status == ["done", "interrupted", "pending"]  # interrupted is its own state (issue 18)


def test_ctrl_c_in_the_middle_of_writing_removes_the_temp_file(tmp_path: Path, model_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _three_photos(tmp_path / "src")
    real_png, calls = io_write._ENCODERS["PNG"], []

    def ctrl_c_mid_write(f, out) -> None:
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 4096)
            raise KeyboardInterrupt
        real_png(f, out)

    monkeypatch.setitem(io_write._ENCODERS, "PNG", ctrl_c_mid_write)
    out = tmp_path / "out"
    result = upscale(model_path, tmp_path / "src", "-o", out)
    assert result.exit_code == 130
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png"] and no_temp_files(out)


# --- command line: usage errors, options, report ---------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--format", "gif"], "choose one of keep, png, jpg, webp, tiff"),
    (["--tile", "5"], "at least 32"),
    (["--tile", "big"], "0 (whole image) or auto"),
    (["--scale", "5"], "--scale"),
    (["--device", "nonsense"], "nonsense"),
    (["--precision", "fp8"], "unknown precision"),
    (["--attention", "magic"], "unknown attention kernel"),
    (["--name", "{nope}"], "bad template"),
    (["--scale", "3"], "upscales x2, but x3 was asked"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, model_path: Path, args: list[str], message: str) -> None:
    coffee().save(tmp_path / "a.png")
    result = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in one_line(result.output), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--device", "nonsense"], "nonsense"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--precision", "fp8"], "unknown precision"),
    (["--attention", "magic"], "unknown attention kernel"),
])
@pytest.mark.parametrize("mode", ["finished batch", "dry run"])
def test_bad_run_options_are_reported_when_no_file_needs_the_model(
        tmp_path: Path, model_path: Path, args: list[str], message: str, mode: str) -> None:
    if "cuda" in args[-1] and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    coffee().save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x2.png").write_bytes(b"earlier output")
    extra = ["--dry-run"] if mode == "dry run" else []
    result = upscale(model_path, tmp_path / "a.png", "-o", out, *args, *extra)
    assert result.exit_code == 2 and message in one_line(result.output), result.output
    assert (out / "a_x2.png").read_bytes() == b"earlier output"


def test_missing_model_no_match_glob_and_empty_folder_are_usage_errors(tmp_path: Path) -> None:
    coffee().save(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    cases = [([tmp_path / "a.png", "-m", tmp_path / "nope.safetensors"], "nor an existing file"),
             ([f"{tmp_path}/*.tiff"], "no file matches this pattern"),
             ([tmp_path / "empty"], "no image files found")]
    for args, message in cases:
        result = upscale(None, *args, "-o", tmp_path / "out")
        assert result.exit_code == 2 and message in one_line(result.output), result.output


def test_json_report_schema(tmp_path: Path, model_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    coffee().save(src / "new.png")
    coffee().save(src / "old.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old_x2.png").write_bytes(b"exists")
    result = upscale(model_path, src, "-o", tmp_path / "out", "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == model_path.stem and report["scale"] == 2
    keys = {"input", "output", "status", "error", "input_size", "output_size", "seconds", "warnings", "kernels",
            "tile", "damage_read"}
    files = {Path(f["input"]).name: f for f in report["files"]}
    assert all(set(f) == keys for f in files.values())
    done, skipped, failed = files["new.png"], files["old.png"], files["broken.png"]
    assert done["status"] == "done" and done["error"] is None
    assert done["input_size"] == [48, 40] and done["output_size"] == [96, 80] and done["seconds"] > 0
    assert skipped["status"] == "skipped" and skipped["output_size"] is None and skipped["kernels"] == []
    assert done["damage_read"] is None  # only a damage-conditioned model reads the damage
    assert failed["status"] == "failed" and isinstance(failed["error"], str) and failed["output_size"] is None
    (tmp_path / "blocker").write_text("a file, so no folder can be under it")
    unwritable = upscale(model_path, src / "new.png", "-o", tmp_path / "out", "--json", tmp_path / "blocker" / "r.json")
    assert unwritable.exit_code == 1 and "cannot write the JSON report" in one_line(unwritable.output)


@pytest.mark.parametrize("kernel", ["math", "sdpa"])
def test_the_kernel_that_ran_is_reported(tmp_path: Path, model_path: Path, kernel: str) -> None:
    coffee().save(tmp_path / "a.png")
    result = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "out", "--attention", kernel, "-v",
                     "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    ran = json.loads((tmp_path / "r.json").read_text())["files"][0]["kernels"]
    if kernel == "math":
        assert ran == ["math"]
    else:  # PyTorch picks the SDPA backend; ribsr names the one it picked
        assert ran and all(k.startswith("sdpa:") for k in ran)
    assert f"kernel {', '.join(ran)}" in result.output  # the per-file line
    assert f"attention kernel that ran: {', '.join(ran)}" in result.output  # the summary


def test_quiet_and_verbose(tmp_path: Path, model_path: Path) -> None:
    coffee().save(tmp_path / "a.png")
    quiet = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "q", "-q")
    assert quiet.exit_code == 0 and quiet.output.strip() == "1 done, 0 skipped, 0 failed"
    verbose = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "v", "-v")
    assert verbose.exit_code == 0
    assert f"model {model_path.stem} x2 on cpu" in verbose.output and "-> " in verbose.output


@pytest.mark.parametrize("fmt, ext, pil_format", [("jpg", ".jpg", "JPEG"), ("webp", ".webp", "WEBP"),
                                                  ("tiff", ".tif", "TIFF"), ("png", ".png", "PNG")])
def test_format_option_converts(tmp_path: Path, model_path: Path, fmt: str, ext: str, pil_format: str) -> None:
    coffee().save(tmp_path / "a.bmp")
    result = upscale(model_path, tmp_path / "a.bmp", "-o", tmp_path / "out", "--format", fmt)
    assert result.exit_code == 0
    with Image.open(tmp_path / "out" / f"a_x2{ext}") as im:
        assert im.format == pil_format and im.size == (96, 80)


def test_animated_gif_in_a_folder_becomes_a_png_of_its_first_frame(tmp_path: Path, model_path: Path) -> None:
    first, second = coffee().quantize(64), crop("chelsea.png", (100, 80, 148, 120)).quantize(64)
    (tmp_path / "src").mkdir()
    first.save(tmp_path / "src" / "anim.gif", save_all=True, append_images=[second], duration=100)
    first.convert("RGB").save(tmp_path / "frame0.png")  # the reference: the same frame as a plain PNG
    result = upscale(model_path, tmp_path / "src", "-o", tmp_path / "out", "--tile", "0")
    reference = upscale(model_path, tmp_path / "frame0.png", "-o", tmp_path / "ref", "--tile", "0")
    assert result.exit_code == 0 and reference.exit_code == 0, result.output
    assert "first" in one_line(result.output)  # the multi-frame warning names what was kept
    np.testing.assert_array_equal(pixels(tmp_path / "out" / "anim_x2.png"), pixels(tmp_path / "ref" / "frame0_x2.png"))


def test_outscale_is_the_model_output_shrunk_by_lanczos(tmp_path: Path, model_path: Path) -> None:
    """--outscale 1.5 with an x2 model: the x2 result, Lanczos-resized to 1.5x the input (Pillow as the reference)."""
    src = crop("chelsea.png", (60, 40, 160, 110))  # 100x70 -> 150x105
    src.save(tmp_path / "cat.png", dpi=(300, 300))
    plain = upscale(model_path, tmp_path / "cat.png", "-o", tmp_path / "x2", "--tile", "0")
    result = upscale(model_path, tmp_path / "cat.png", "-o", tmp_path / "out", "--tile", "0", "--outscale", "1.5",
                     "--json", tmp_path / "r.json")
    assert plain.exit_code == 0 and result.exit_code == 0, result.output
    with Image.open(tmp_path / "x2" / "cat_x2.png") as im:
        expected = np.stack([np.asarray(im.getchannel(c).convert("F").resize((150, 105), Image.Resampling.LANCZOS))
                             for c in range(3)], axis=-1)
    out_file = tmp_path / "out" / "cat_x1.5.png"  # {scale} is the final factor
    got = pixels(out_file)
    assert got.shape == (105, 150, 3)
    assert np.abs(got - np.clip(np.rint(expected), 0, 255)).max() == 0
    with Image.open(out_file) as im:
        assert im.info["dpi"] == pytest.approx((450, 450), abs=0.1)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scale"] == 2 and report["outscale"] == 1.5 and report["files"][0]["output_size"] == [150, 105]


def test_outscale_keeps_16_bits_and_alpha_and_picks_the_model_scale(tmp_path: Path, model_path: Path) -> None:
    rgb = np.asarray(coffee(), dtype=np.uint16) * 257
    alpha = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (40, 1))
    tifffile.imwrite(tmp_path / "deep.tif", np.dstack([rgb, alpha]), photometric="rgb", extrasamples=["unassalpha"])
    # no -s: 1.25 needs only the x2 model (the test model is x2, so a wrong pick would be a usage error)
    result = upscale(model_path, tmp_path / "deep.tif", "-o", tmp_path / "out", "--outscale", "1.25")
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "out" / "deep_x1.25.tif")
    assert out.bit_depth == 16 and out.pixels.shape == (50, 60, 3) and out.alpha.shape == (50, 60)
    assert out.alpha.dtype == np.uint16 and abs(int(out.alpha[:, -1].mean()) - 65535) < 700  # the ramp survives
    assert len(np.unique(out.pixels)) > 256  # not squeezed through 8 bits


@pytest.mark.parametrize("args, message", [
    (["--outscale", "0.5"], "must be at least 1"),
    (["--outscale", "5"], "beyond the largest model scale x4"),
    (["--outscale", "3.5", "-s", "3"], "above --scale 3"),
    (["--outscale", "2.5"], "upscales x2, but x3 was asked"),  # no -s: x3 is picked, the x2 checkpoint refuses
])
def test_outscale_usage_errors(tmp_path: Path, model_path: Path, args: list[str], message: str) -> None:
    coffee().save(tmp_path / "a.png")
    result = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in one_line(result.output), result.output
    assert not (tmp_path / "out").exists()


def test_output_format_follows_the_name_even_when_content_lies(tmp_path: Path, model_path: Path) -> None:
    """A JPEG saved as .png gives a .png that really is PNG, not JPEG bytes behind a PNG name."""
    coffee().save(tmp_path / "liar.png", format="JPEG")
    assert upscale(model_path, tmp_path / "liar.png", "-o", tmp_path / "out").exit_code == 0
    with Image.open(tmp_path / "out" / "liar_x2.png") as im:
        assert im.format == "PNG"


def test_quality_option_changes_jpeg_size(tmp_path: Path, model_path: Path) -> None:
    coffee().save(tmp_path / "a.png")
    sizes = []
    for q in ("30", "95"):
        assert upscale(model_path, tmp_path / "a.png", "-o", tmp_path / q, "--format", "jpg", "--quality", q).exit_code == 0
        sizes.append((tmp_path / q / "a_x2.jpg").stat().st_size)
    assert sizes[0] < sizes[1]


def test_inference_options_run_and_agree(tmp_path: Path, model_path: Path) -> None:
    """--tile/--tile-overlap/--batch-tiles/--precision/--attention/--device reach the engine; batching changes nothing."""
    coffee(96, 80).save(tmp_path / "a.png")
    common = ["--tile", "48", "--tile-overlap", "8", "--device", "cpu", "--precision", "fp32", "--attention", "math"]
    one = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "one", *common, "--batch-tiles", "1")
    many = upscale(model_path, tmp_path / "a.png", "-o", tmp_path / "many", *common, "--batch-tiles", "4")
    assert one.exit_code == 0 and many.exit_code == 0
    a, b = pixels(tmp_path / "one" / "a_x2.png"), pixels(tmp_path / "many" / "a_x2.png")
    assert np.abs(a - b).max() <= 1
    coffee().save(tmp_path / "small.png")
    plain = upscale(model_path, tmp_path / "small.png", "-o", tmp_path / "plain", "--tile", "0")
    tta = upscale(model_path, tmp_path / "small.png", "-o", tmp_path / "tta", "--tta", "--tile", "0")
    assert plain.exit_code == 0 and tta.exit_code == 0
    ensemble = pixels(tmp_path / "tta" / "small_x2.png")
    assert ensemble.shape == (80, 96, 3) and not np.array_equal(ensemble, pixels(tmp_path / "plain" / "small_x2.png"))
