"""Training-data pipeline: manifest parsing, offline fetch logic, prepare/HRPool, leak check.

Nothing here touches the network or needs the downloaded photos: fetch runs
against .debs built on the spot (apt is monkeypatched), and the image content
comes from the shared benchmark images (fine for tests, never for training).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from typer.testing import CliRunner

from ribsr_cli.fileutil import sha256_file
from ribsr_cli.cli import app
from ribsr_cli.training.fetch import Apt, EetTool, FetchError, fetch
from ribsr_cli.training.leakcheck import LeakChecker
from ribsr_cli.training.manifest import default_manifest, parse_source, read_manifest, verify_sha256
from ribsr_cli.training.pool import FLAT_KEEP, HRPool, detail
from ribsr_cli.training.prepare import blockiness, load_photo, prepare

REPO = Path(__file__).resolve().parents[1]
HEADER = "file\twidth\theight\tsha256\tsource\tlicense\n"


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows: (file, sha256, source)."""
    path.write_text(HEADER + "".join(f"{f}\t1\t1\t{sha}\t{src}\tCC0\n" for f, sha, src in rows))
    return path


# --------------------------------------------------------------------------- manifest


def test_parse_source_forms() -> None:
    eet = parse_source("apt bookworm enlightenment-data 0.25.4-2 + libeet-bin: eet -x "
                       "/usr/share/enlightenment/data/backgrounds/Bamboo.edj edje/images/0 (raw JFIF q99)")
    assert eet["packages"] == ("enlightenment-data",) and eet["version"] == "0.25.4-2"
    assert eet["member"].endswith("Bamboo.edj") and eet["eet_key"] == "edje/images/0"
    epoch = parse_source("apt bookworm palapeli-data 4:22.12.3-1: /usr/share/palapeli/collection/a.jpg")
    assert epoch["version"] == "4:22.12.3-1" and epoch["member"] == "/usr/share/palapeli/collection/a.jpg"
    two = parse_source("apt bookworm lomiri-wallpapers-16.04 / -20.04 20.04.0-2: /usr/share/backgrounds/K.jpg")
    assert two["packages"] == ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
    assert parse_source("apt TRIXIE budgie-backgrounds 3.0-1: /x/y.jpg")["suite"] == "trixie"
    assert "problem" in parse_source("wget http://example/a.jpg")


def test_shared_manifest_parses_completely() -> None:
    tsv = default_manifest()
    if not tsv.is_file():
        pytest.skip(f"{tsv} not present")
    specs = read_manifest(tsv)
    assert len(specs) == 83
    assert not [s.file for s in specs if s.problem]
    assert all(len(s.sha256) == 64 for s in specs)


@pytest.mark.parametrize("body, reason", [
    ("file\twidth\n", "header"),
    (HEADER + "a.png\t1\n", "expected 6 tab-separated columns"),
    (HEADER + "../a.png\t1\t1\tab\tx\tCC0\n", "relative path inside DEST"),
    (HEADER + "a.png\twide\t1\tab\tx\tCC0\n", "must be integers"),
])
def test_bad_manifest_is_one_line_naming_file_and_row(tmp_path: Path, body: str, reason: str) -> None:
    tsv = tmp_path / "m.tsv"
    tsv.write_text(body)
    for argv in (["data", "fetch", str(tmp_path / "dest"), "--tsv", str(tsv)],
                 ["data", "prepare", str(tmp_path), str(tmp_path / "out"), "--tsv", str(tsv)]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tsv}") and reason in lines[0], result.output
    missing = CliRunner().invoke(app, ["data", "fetch", str(tmp_path / "dest"), "--tsv", str(tmp_path / "no.tsv")])
    assert missing.exit_code == 1 and f"error: {tmp_path / 'no.tsv'}: cannot read" in missing.output


def test_sha256_verification_rejects_wrong_file(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"photo bytes")
    good = sha256_file(f)
    assert verify_sha256(f, good) and verify_sha256(f, good.upper())
    f.write_bytes(b"photo bytez")
    assert not verify_sha256(f, good)
    assert not verify_sha256(tmp_path / "missing", good)


# --------------------------------------------------------------------------- fetch (offline)


def _build_deb(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp / f"src-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    for rel, data in files.items():
        (root / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / rel.lstrip("/")).write_bytes(data)
    deb = tmp / f"{name}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_verifies_skips_and_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, other = b"\x89PNG good photo", b"other bytes"
    deb = _build_deb(tmp_path, "walls", {
        "/usr/share/w/good.png": good,
        "/usr/share/w/bad.png": other,
        "/usr/share/w/big/640x480.jpg": b"small",
        "/usr/share/w/big/2560x1600.jpg": good,
        "/usr/share/e/theme.edj": good,
    })
    calls: list[str] = []

    def fake_download(self: Apt, package: str, version: str, into: Path) -> Path:
        calls.append(f"{self.suite}:{package}={version}")
        if package == "nosuch":
            raise FetchError("cannot download nosuch: E: Unable to locate package nosuch")
        into.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(deb, into))

    fake_eet = tmp_path / "eet"  # stands in for `eet -x EDJ KEY OUT` by copying EDJ
    fake_eet.write_text('#!/bin/sh\n[ "$1" = -x ] && [ "$3" = edje/images/0 ] && cp "$2" "$4"\n')
    fake_eet.chmod(0o755)

    def fake_setup(self: EetTool) -> None:
        self._cmd, self._env = [str(fake_eet)], None

    monkeypatch.setattr(Apt, "download", fake_download)
    monkeypatch.setattr(EetTool, "_setup", fake_setup)
    sha = hashlib.sha256(good).hexdigest()
    tsv = _manifest(tmp_path / "m.tsv", [
        ("set/good.png", sha, "apt bookworm walls 1.0-1: /usr/share/w/good.png"),
        ("set/bad.png", sha, "apt bookworm walls 1.0-1: /usr/share/w/bad.png"),
        ("set/largest.jpg", sha, "apt bookworm walls 1.0-1: /usr/share/w/big/<largest>"),
        ("set/absent.png", sha, "apt bookworm walls 1.0-1: /usr/share/w/absent.png"),
        ("set/theme.jpg", sha, "apt bookworm walls 1.0-1 + libeet-bin: eet -x /usr/share/e/theme.edj edje/images/0"),
        ("set/gone.png", sha, "apt trixie nosuch 2.0: /usr/share/n.png"),
    ])
    dest = tmp_path / "photos"
    report = fetch(dest, tsv, workdir=tmp_path / "work", log=lambda m: None)
    assert sorted(report.fetched) == ["set/good.png", "set/largest.jpg", "set/theme.jpg"]
    assert "sha256 mismatch" in report.skipped["set/bad.png"]
    assert "not found" in report.skipped["set/absent.png"]
    assert "Unable to locate" in report.skipped["set/gone.png"]
    assert report.got == 3 and "got 3/6" in report.summary() and "set/bad.png" in report.summary()
    assert (dest / "set/good.png").read_bytes() == good and not (dest / "set/bad.png").exists()
    assert not list(dest.rglob("*.part")) and not list((tmp_path / "work").iterdir())
    assert calls == ["bookworm:walls=1.0-1", "trixie:nosuch=2.0"]  # one download per package

    calls.clear()
    (dest / "set/largest.jpg").write_bytes(b"tampered")  # a wrong file present is fetched again
    again = fetch(dest, tsv, workdir=tmp_path / "work", log=lambda m: None)
    assert sorted(again.present) == ["set/good.png", "set/theme.jpg"] and again.fetched == ["set/largest.jpg"]
    assert calls == ["bookworm:walls=1.0-1", "trixie:nosuch=2.0"]


def test_data_fetch_exits_2_and_names_what_it_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_package(self: Apt, package: str, version: str, into: Path) -> Path:
        raise FetchError(f"cannot download {package}: E: Unable to locate package {package}")

    monkeypatch.setattr(Apt, "download", no_such_package)
    tsv = _manifest(tmp_path / "m.tsv", [("gone.png", "0" * 64, "apt bookworm nosuch 1.0: /usr/share/n.png"),
                                         ("odd.png", "0" * 64, "wget http://example/odd.png")])
    result = CliRunner().invoke(app, ["data", "fetch", str(tmp_path / "dest"), "--tsv", str(tsv),
                                      "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 2, result.output
    assert "got 0/2 photos" in result.output and "gone.png: cannot download nosuch" in result.output
    assert "odd.png: source not understood" in result.output


def test_wrapper_script_help() -> None:
    out = subprocess.run(["bash", str(REPO / "scripts" / "get_training_photos.sh"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "Usage: scripts/get_training_photos.sh" in out and "set -e" not in out


# --------------------------------------------------------------------------- prepare + pool


def test_load_photo_orientation_depth_alpha(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_photo(tmp_path / "o.jpg", downscale=1)
    assert out.shape == (40, 20, 3) and out[:10].mean() > 200 and out[-10:].mean() < 50
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "d16.png")
    assert load_photo(tmp_path / "d16.png", downscale=1).min() == 255  # scaled, not clipped garbage
    rgba = np.zeros((9, 7, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_photo(tmp_path / "a.png", downscale=2)
    assert out.shape == (4, 3, 3) and np.all(out == 128)  # odd sizes cropped, alpha over grey


def test_lanczos_halving_removes_jpeg_blocking(benchmarks_dir: Path, tmp_path: Path) -> None:
    src = _jpeg(Image.open(benchmarks_dir / "Set14/HR/barbara.png"), 20)
    src.save(tmp_path / "b.png")
    before = blockiness(np.asarray(src.convert("L")), 8)
    after = blockiness(np.asarray(Image.fromarray(load_photo(tmp_path / "b.png")).convert("L")), 4)
    assert before > 1.3 and after < 1 + (before - 1) / 2


@pytest.fixture
def small_pool(benchmarks_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Three Set14 images (halved: 250x240, 360x288, 125x180) prepared without a leak check."""
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for name in ("baboon", "barbara"):
        shutil.copy(benchmarks_dir / "Set14/HR" / f"{name}.png", src / f"{name}.png")
    shutil.copy(benchmarks_dir / "Set14/HR/comic.png", src / "sub" / "comic.png")
    out = tmp_path / "prepared"
    report = prepare(src, out, benchmark_dirs=[], log=lambda m: None)
    assert len(report.images) == 3 and not report.skipped
    return src, out


def test_prepare_layout_and_hrpool(small_pool: tuple[Path, Path]) -> None:
    src, out = small_pool
    index = json.loads((out / "index.json").read_text())
    names = [e["name"] for e in index["images"]]
    assert names == ["baboon.png", "barbara.png", "sub/comic.png"]
    assert (out / "hr.u8").stat().st_size == index["total_bytes"] == sum(
        e["height"] * e["width"] * 3 for e in index["images"])
    assert index["images"][1]["offset"] == 250 * 240 * 3
    assert index["images"][0]["sha256"] == sha256_file(src / "baboon.png")
    pool = HRPool(out)
    assert len(pool) == 3 and pool.names == names
    for i, name in enumerate(names):
        assert np.array_equal(pool.image(i), load_photo(src / name))
    rng = np.random.default_rng(1)
    crop = pool.random_crop(rng, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8 and crop.flags.writeable
    a = [pool.random_crop(np.random.default_rng(7), 48) for _ in range(2)]
    assert np.array_equal(a[0], a[1])  # same seed, same crop


def _source_of(crop: np.ndarray, pool: HRPool) -> int:
    """Index of the pool image `crop` was cut from (exact sub-array search)."""
    s = crop.shape[0]
    for i in range(len(pool)):
        img = pool.image(i)
        ys, xs = np.nonzero(np.all(img[: img.shape[0] - s + 1, : img.shape[1] - s + 1] == crop[0, 0], axis=2))
        for y, x in zip(ys, xs):
            if np.array_equal(img[y:y + s, x:x + s], crop):
                return i
    raise AssertionError("crop not found in any pool image")


def test_hrpool_area_weighting_and_size_filter(small_pool: tuple[Path, Path]) -> None:
    pool = HRPool(small_pool[1])
    rng = np.random.default_rng(0)
    size = 150  # comic (125 wide) is too small and must never be picked
    counts = np.bincount([_source_of(pool.random_crop(rng, size), pool) for _ in range(120)], minlength=3)
    assert counts[2] == 0
    expected = 120 * 250 * 240 / (250 * 240 + 360 * 288)  # ~44 from baboon
    assert abs(counts[0] - expected) < 18
    with pytest.raises(ValueError, match="at least 400x400"):
        pool.random_crop(rng, 400)


def test_detail_is_the_mean_luma_step() -> None:
    stripes = np.zeros((20, 20, 3), np.uint8)
    stripes[:, 1::2] = 10  # every horizontal step is 10 levels, no vertical step
    assert detail(stripes) == pytest.approx(10.0)
    colour = np.zeros((20, 20, 3), np.uint8)
    colour[::2, :, 1] = 100  # green rows: luma steps of 0.587 * 100 down the columns only
    assert detail(colour) == pytest.approx(58.7, rel=1e-5)
    assert detail(np.full((20, 20, 3), 77, np.uint8)) == 0.0


@pytest.fixture(scope="module")
def sharp_and_flat_pool(tmp_path_factory) -> Path:
    """coffee.png, and a sky-flat image of its mean colour (detail 0): two equal areas."""
    src = tmp_path_factory.mktemp("detail-photos")
    photo = Image.open(Path(__file__).resolve().parents[1] / "examples" / "coffee.png").convert("RGB")
    photo.save(src / "sharp.png")
    mean = tuple(int(v) for v in np.asarray(photo).reshape(-1, 3).mean(axis=0).round())
    Image.new("RGB", photo.size, mean).save(src / "flat.png")
    out = src.parent / (src.name + "-prepared")
    prepare(src, out, downscale=1, benchmark_dirs=[], log=lambda m: None)
    return out


def test_uniform_crops_draw_what_they_always_drew(sharp_and_flat_pool: Path) -> None:
    """detail_ref 0 is the area-weighted uniform crop, rebuilt here from its three draws: the image from the
    cumulative areas, then the row, then the column (so earlier runs' random streams are unchanged)."""
    pool = HRPool(sharp_and_flat_pool)
    size = 64
    areas = np.cumsum([pool.image(i).shape[0] * pool.image(i).shape[1] for i in range(len(pool))]).astype(float)
    for seed in range(5):
        rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
        crop = pool.random_crop(rng, size, 0.0)
        i = min(int(np.searchsorted(areas, ref.random() * areas[-1], side="right")), len(pool) - 1)
        h, w = pool.image(i).shape[:2]
        y, x = int(ref.integers(0, h - size + 1)), int(ref.integers(0, w - size + 1))
        assert np.array_equal(crop, pool.image(i)[y:y + size, x:x + size])
        assert rng.bit_generator.state == ref.bit_generator.state  # nothing else drawn


def test_detail_biased_crops_keep_flat_ones_at_the_documented_rate(sharp_and_flat_pool: Path) -> None:
    pool = HRPool(sharp_and_flat_pool)
    flat_index = pool.names.index("flat.png")
    ref, size, n = 12.0, 64, 1200
    rng = np.random.default_rng(0)
    uniform = [pool.random_crop(rng, size) for _ in range(n)]
    from_flat = np.array([_source_of(c, pool) == flat_index for c in uniform])
    assert 0.4 < from_flat.mean() < 0.6  # equal areas
    assert all(detail(c) == 0.0 for c, f in zip(uniform, from_flat) if f)  # the flat image takes the floor
    # the rule: a draw is kept with max(FLAT_KEEP, min(1, detail / ref)), else drawn again
    sharp_keep = np.mean([min(1.0, detail(c) / ref) for c, f in zip(uniform, from_flat) if not f])
    assert sharp_keep > 3 * FLAT_KEEP
    biased = [pool.random_crop(rng, size, ref) for _ in range(n)]
    flat_share = np.mean([_source_of(c, pool) == flat_index for c in biased])
    expected = FLAT_KEEP / (FLAT_KEEP + sharp_keep)  # ~0.15; without the floor 0, with a floor of 0.05 ~0.08
    assert abs(flat_share - expected) < 4 * np.sqrt(expected * (1 - expected) / n), (flat_share, expected)


def test_detail_biased_crops_end_on_a_pool_of_flat_images(sharp_and_flat_pool: Path) -> None:
    """Even where nothing has detail, a crop comes back after 1 / FLAT_KEEP draws on average."""
    pool = HRPool(sharp_and_flat_pool)
    flat_index = pool.names.index("flat.png")
    only_flat = HRPool(sharp_and_flat_pool)
    only_flat._uniform_crop = lambda rng, size: np.array(pool.image(flat_index)[:size, :size])
    class CountingRng:  # counts the keep/redraw decisions
        def __init__(self, seed: int) -> None:
            self.rng, self.decisions = np.random.default_rng(seed), 0

        def random(self) -> float:
            self.decisions += 1
            return self.rng.random()

    draws = []
    for seed in range(200):
        counting = CountingRng(seed)
        only_flat.random_crop(counting, 32, 12.0)
        draws.append(counting.decisions)
    assert abs(np.mean(draws) - 1 / FLAT_KEEP) < 3.0  # geometric with mean 10 (sd of the mean of 200: ~0.7)


def test_prepare_rejects_hash_mismatch_and_missing(small_pool: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = small_pool
    tsv = _manifest(tmp_path / "m.tsv", [
        ("baboon.png", sha256_file(src / "baboon.png"), "x"),
        ("barbara.png", "0" * 64, "x"),
        ("nothere.png", "0" * 64, "x"),
    ])
    report = prepare(src, tmp_path / "p2", benchmark_dirs=[], manifest=tsv, log=lambda m: None)
    assert [e["name"] for e in report.images] == ["baboon.png"]
    assert "sha256 mismatch" in report.skipped["barbara.png"] and "missing" in report.skipped["nothere.png"]


def test_prepare_cli(small_pool: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "prepare", str(small_pool[0]), str(tmp_path / "cli"), "--tsv", "none",
                                      "--no-default-benchmarks"])
    assert result.exit_code == 0 and "prepared 3 images" in result.output
    assert len(HRPool(tmp_path / "cli")) == 3


# --------------------------------------------------------------------------- leak check


@pytest.fixture(scope="module")
def set5_checker(benchmarks_dir: Path) -> LeakChecker:
    return LeakChecker([benchmarks_dir / "Set5/HR"])


def test_leak_flags_shrunk_cropped_rejpegged_benchmark(set5_checker: LeakChecker, benchmarks_dir: Path) -> None:
    baby = Image.open(benchmarks_dir / "Set5/HR/baby.png").convert("RGB")
    small = baby.resize((410, 410), Image.Resampling.LANCZOS).crop((40, 60, 370, 350))
    match = set5_checker.check(np.asarray(_jpeg(small, 70)))
    assert match is not None and match.benchmark.name == "baby.png" and match.score > 0.9


def test_leak_flags_benchmark_inside_larger_photo(set5_checker: LeakChecker, benchmarks_dir: Path) -> None:
    canvas = Image.open(benchmarks_dir / "Set14/HR/barbara.png").convert("RGB").resize((1100, 880))
    bird = Image.open(benchmarks_dir / "Set5/HR/bird.png").convert("RGB")
    canvas.paste(bird.resize((403, 403), Image.Resampling.BICUBIC), (520, 300))
    match = set5_checker.check(np.asarray(_jpeg(canvas, 80)))
    assert match is not None and match.benchmark.name == "bird.png"
    assert match.direction == "benchmark in photo" and abs(match.x - 520) < 12 and abs(match.scale - 1.4) < 0.08


def test_leak_real_overlaps_between_set5_and_set14(set5_checker: LeakChecker, benchmarks_dir: Path) -> None:
    """Set14's face is Set5's head, and Set5's butterfly is cut from Set14's monarch: both must be
    caught; the other twelve Set14 images are unrelated photos and must pass."""
    hr = benchmarks_dir / "Set14/HR"
    found = {p.stem: set5_checker.check(p) for p in sorted(hr.glob("*.png"))}
    face, monarch = found.pop("face"), found.pop("monarch")
    assert face is not None and face.benchmark.name == "head.png"
    assert monarch is not None and monarch.benchmark.name == "butterfly.png"
    assert {k: v.describe() for k, v in found.items() if v is not None} == {}


def test_prepare_refuses_leaking_photo(benchmarks_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(benchmarks_dir / "Set14/HR/zebra.png", src / "zebra.png")
    baby = Image.open(benchmarks_dir / "Set5/HR/baby.png").convert("RGB")
    _jpeg(baby.resize((1024, 1024), Image.Resampling.BICUBIC), 85).save(src / "big_baby.jpg", quality=90)
    report = prepare(src, tmp_path / "out", benchmark_dirs=[benchmarks_dir / "Set5"], log=lambda m: None)
    assert [e["name"] for e in report.images] == ["zebra.png"]
    assert "baby.png" in report.skipped["big_baby.jpg"]
    assert "big_baby.jpg" in json.loads((tmp_path / "out/index.json").read_text())["skipped"]
