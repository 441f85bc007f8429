"""Training photographs: fetch them from Debian packages, verify, and prepare an HR pool.

Why Debian packages: they are a public, versioned, checksummed archive that this
project's machines can reach, so the training set is reproducible byte for byte
from `shared/training-photos.tsv` (file, size, sha256, source, license) alone.

Three parts:

* `fetch` downloads the `.deb`s named in the manifest with `apt-get download`
  (never installs anything), unpacks them with `dpkg-deb -x` in a temporary
  folder, copies (or, for enlightenment's `.edj` themes, `eet -x`-extracts) each
  photo and keeps it only if its sha256 matches the manifest.
* `prepare` decodes the verified photos, halves them with Lanczos, refuses any
  that match a benchmark image (`leakcheck`) and packs the rest into one flat
  uint8 file plus a JSON index.
* `HRPool` memory-maps that file and hands the trainer random crops cheaply.

CLI: ``python -m ribsr_cli.training.photos fetch|prepare ...`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
POOL_FILE = "hr.u8"
INDEX_FILE = "index.json"

Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shared_dir() -> Path:
    """The read-only shared folder beside the repository (``RIBSR_SHARED`` overrides)."""
    return Path(os.environ.get("RIBSR_SHARED", REPO_ROOT.parent / "shared"))


def default_manifest() -> Path:
    """``RIBSR_PHOTOS_TSV`` or ``<shared>/training-photos.tsv``."""
    env = os.environ.get("RIBSR_PHOTOS_TSV")
    return Path(env) if env else shared_dir() / "training-photos.tsv"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so 20 MB photos don't sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> bool:
    """True when `path` is a regular file whose sha256 equals `expected` (case-insensitive)."""
    return path.is_file() and sha256_file(path) == expected.strip().lower()


# --------------------------------------------------------------------------- manifest

_SOURCE_RE = re.compile(
    r"^apt\s+(?P<suite>\S+)\s+(?P<pkgs>.+?)\s+(?P<version>\S+)"
    r"(?:\s*\+\s*(?P<tool>[\w.+-]+))?:\s+(?P<how>.+)$"
)


@dataclass(frozen=True)
class PhotoSpec:
    """One manifest row, with its free-text `source` column parsed into apt terms."""

    file: str
    width: int
    height: int
    sha256: str
    source: str
    license: str
    suite: str = ""
    packages: tuple[str, ...] = ()
    version: str = ""
    member: str = ""  # absolute path inside the package; may end in "<largest>"
    eet_key: str = ""  # set when `member` is an .edj file to run `eet -x` on
    problem: str = ""  # why the source column could not be understood

    @property
    def group(self) -> tuple[str, tuple[str, ...], str]:
        """Photos with the same group come from the same download."""
        return (self.suite, self.packages, self.version)


class SourceInfo(TypedDict, total=False):
    """The parsed `source` column: which packages, and where the photo is inside them."""

    suite: str
    packages: tuple[str, ...]
    version: str
    member: str
    eet_key: str
    problem: str


def parse_source(source: str) -> SourceInfo:
    """Parse e.g. ``apt bookworm pkg-a / -b 1:2.0-1 + libeet-bin: eet -x /x.edj key (note)``.

    ``pkg-a / -b`` names two packages (the second shares the first's stem up to its
    last ``-``); the file may be in either.
    """
    m = _SOURCE_RE.match(source.strip())
    if not m:
        return {"problem": f"source not understood: {source!r}"}
    names = [p.strip() for p in m["pkgs"].split("/") if p.strip()]
    stem = names[0].rsplit("-", 1)[0]
    packages = tuple(stem + n if n.startswith("-") else n for n in names)
    how = m["how"].split()
    out: SourceInfo = {"suite": m["suite"].lower(), "packages": packages, "version": m["version"]}
    if how[:2] == ["eet", "-x"] and len(how) >= 4:
        out["member"], out["eet_key"] = how[2], how[3]
    elif how[0].startswith("/"):
        out["member"] = how[0]
    else:
        out["problem"] = f"no path in source: {source!r}"
    return out


def read_manifest(path: Path) -> list[PhotoSpec]:
    """Rows of the tab-separated manifest (header: file width height sha256 source license)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    want = ["file", "width", "height", "sha256", "source", "license"]
    if header[: len(want)] != want:
        raise ValueError(f"{path}: header {header} is not {want}")
    specs = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < len(want):
            raise ValueError(f"{path}:{n}: expected {len(want)} tab-separated columns")
        file, w, h, sha, source, lic = cols[: len(want)]
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise ValueError(f"{path}:{n}: file must be a relative path inside DEST: {file!r}")
        specs.append(PhotoSpec(file, int(w), int(h), sha.lower(), source, lic, **parse_source(source)))
    return specs


# --------------------------------------------------------------------------- apt

class FetchError(RuntimeError):
    """A download, unpack or extraction step failed; the message says which and why."""


def _run(cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        res = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise FetchError(f"{cmd[0]} not found") from exc
    if res.returncode != 0:
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise FetchError(f"`{' '.join(cmd)}` failed ({res.returncode}): {tail}")
    return res.stdout


def _system_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    m = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
    return m.group(1) if m else ""


class Apt:
    """`apt-get download` for one Debian suite, never touching the system's apt settings.

    The machine's own suite uses the system package lists (refreshed with
    `apt-get update` only when a package is missing, and only as root); any other
    suite (e.g. trixie for budgie-backgrounds) gets a private sources list, list
    folder and cache under `workdir`, passed with ``-o`` options.
    """

    def __init__(self, suite: str, workdir: Path, *, mirror: str = DEFAULT_MIRROR,
                 keyring: Path = DEFAULT_KEYRING, log: Log = _say) -> None:
        self.suite = suite
        self.workdir = workdir
        self.mirror = mirror
        self.keyring = keyring
        self.log = log
        self.private = suite != _system_codename()
        self._opts: list[str] = []
        self._updated = False
        # apt drops to the `_apt` user for downloads, which cannot write into a 0700 temp dir.
        if os.geteuid() == 0:
            self._opts += ["-o", "APT::Sandbox::User=root"]

    def _make_private(self) -> None:
        if not self.keyring.is_file():
            raise FetchError(f"Debian archive keyring {self.keyring} missing; cannot verify {self.suite}")
        root = self.workdir / f"apt-{self.suite}"
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        sources = root / "sources.list"
        sources.write_text(f"deb [signed-by={self.keyring}] {self.mirror} {self.suite} main\n")
        self._opts += [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::Cache={root / 'cache'}",
        ]

    def update(self) -> None:
        """Fetch package lists once: the private ones, or the system's as root."""
        if self._updated:
            return
        self._updated = True
        if not self.private and os.geteuid() != 0:
            self.log(f"  not root: using a private package list for {self.suite}")
            self.private = True
        if self.private:
            self._make_private()
        self.log(f"  apt-get update ({'private lists' if self.private else 'system lists'}, {self.suite})")
        _run(["apt-get", *self._opts, "update"])

    def download(self, package: str, version: str, into: Path) -> Path:
        """Download `package` (pinned to `version` when available) into `into`; return the .deb."""
        into.mkdir(parents=True, exist_ok=True)
        if self.private:
            self.update()
        attempts = [f"{package}={version}", package] if version else [package]
        errors = []
        for retry in (False, True):
            if retry:
                if self._updated:
                    break
                self.update()
            for target in attempts:
                before = set(into.glob("*.deb"))
                try:
                    _run(["apt-get", *self._opts, "download", target], cwd=into)
                except FetchError as exc:
                    errors.append(str(exc))
                    continue
                debs = sorted(set(into.glob("*.deb")) - before) or sorted(into.glob(f"{package}_*.deb"))
                if not debs:
                    raise FetchError(f"apt-get download {target} produced no .deb")
                if target == package and version:
                    self.log(f"  note: {package} {version} not available, took the current candidate {debs[0].name}")
                return debs[0]
        raise FetchError(f"cannot download {package} ({self.suite}): {errors[-1] if errors else 'unknown'}")

    def install_set(self, package: str) -> list[str]:
        """Packages `apt-get install` would add for `package` here (a simulation: installs nothing)."""
        out = _run(["apt-get", *self._opts, "-s", "install", "--no-install-recommends", package])
        return [line.split()[1] for line in out.splitlines() if line.startswith("Inst ")]


def unpack_deb(deb: Path, tree: Path) -> None:
    """Unpack a .deb's files into `tree` (`dpkg-deb -x`: no maintainer scripts, no install)."""
    tree.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(tree)])


class EetTool:
    """The `eet` command, from PATH or from libeet-bin and its libraries unpacked privately.

    enlightenment-data keeps its wallpapers inside `.edj` (Eet) files; `eet -x`
    writes an entry's stored bytes unchanged, so the JPEG comes out byte-exact.
    """

    def __init__(self, apt: Apt, workdir: Path, log: Log = _say) -> None:
        self.apt = apt
        self.workdir = workdir
        self.log = log
        self._cmd: list[str] | None = None
        self._env: dict[str, str] | None = None
        self._error: str | None = None

    def _setup(self) -> None:
        found = shutil.which("eet")
        if found:
            self._cmd, self._env = [found], None
            return
        packages = self.apt.install_set("libeet-bin")
        if not packages:
            raise FetchError("eet not on PATH and apt has no libeet-bin to download")
        self.log(f"  eet: unpacking libeet-bin and {len(packages) - 1} libraries privately (no install)")
        debs, root = self.workdir / "eet-debs", self.workdir / "eet-root"
        for pkg in packages:
            unpack_deb(self.apt.download(pkg, "", debs), root)
        binary = root / "usr" / "bin" / "eet"
        if not binary.is_file():
            raise FetchError("libeet-bin unpacked but usr/bin/eet is missing")
        libdirs = sorted({str(p.parent) for p in root.rglob("*.so*") if p.parent.name != "modules"})
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(libdirs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
        self._cmd, self._env = [str(binary)], env

    def extract(self, edj: Path, key: str, out: Path) -> None:
        """`eet -x EDJ KEY OUT`; the tool is set up on first use, and a failed setup is remembered."""
        if self._cmd is None and self._error is None:
            try:
                self._setup()
            except FetchError as exc:
                self._error = f"eet unavailable: {exc} (install libeet-bin or put eet on PATH)"
        if self._error:
            raise FetchError(self._error)
        assert self._cmd is not None
        _run([*self._cmd, "-x", str(edj), key, str(out)], env=self._env)
        if not out.is_file():
            raise FetchError(f"eet -x {edj.name} {key} wrote nothing")


def _resolve_member(tree: Path, member: str) -> Path:
    """Path of `member` inside an unpacked tree; ``dir/<largest>`` picks the largest WxH file."""
    if not member.endswith("<largest>"):
        return tree / member.lstrip("/")
    folder = tree / member.rsplit("/", 1)[0].lstrip("/")
    best: tuple[int, int, Path] | None = None
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.is_symlink() or not p.is_file():
            continue
        m = re.match(r"(\d+)x(\d+)\.", p.name)
        area = int(m[1]) * int(m[2]) if m else 0
        key = (area, p.stat().st_size, p)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise FetchError(f"no image files in {member.rsplit('/', 1)[0]}")
    return best[2]


@dataclass
class FetchReport:
    """What `fetch` ended with: photo names obtained (already there or new) and skipped, with reasons."""

    total: int
    present: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def got(self) -> int:
        return len(self.present) + len(self.fetched)

    def summary(self) -> str:
        lines = [f"got {self.got}/{self.total} photos ({len(self.fetched)} fetched now, "
                 f"{len(self.present)} already present and verified)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {name}: {why}" for name, why in self.skipped.items()]
        else:
            lines.append("skipped: none")
        return "\n".join(lines)


def fetch(dest: Path, manifest: Path | None = None, *, workdir: Path | None = None,
          mirror: str = DEFAULT_MIRROR, log: Log = _say) -> FetchReport:
    """Assemble the manifest's photos under `dest`, idempotently.

    Photos already in `dest` with the right sha256 are kept and not downloaded
    again. The rest are grouped by package so each .deb is downloaded and
    unpacked once (in a temporary folder under `workdir`, removed afterwards).
    Every photo is written to a ``.part`` file, hash-checked, and only then
    renamed into place, so this never leaves an unverified photo in `dest`
    (a wrong file that was already there stays until a good copy replaces it).
    """
    specs = read_manifest(manifest or default_manifest())
    dest = Path(dest)
    report = FetchReport(total=len(specs))
    todo: dict[tuple[str, tuple[str, ...], str], list[PhotoSpec]] = {}
    for spec in specs:
        target = dest / spec.file
        if target.exists():
            if verify_sha256(target, spec.sha256):
                report.present.append(spec.file)
                continue
            log(f"{spec.file}: present but its sha256 is wrong; fetching it again")
        if spec.problem:
            report.skipped[spec.file] = spec.problem
            continue
        todo.setdefault(spec.group, []).append(spec)
    if not todo:
        return report
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ribsr-photos-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        apts: dict[str, Apt] = {}

        def apt_for(suite: str) -> Apt:
            if suite not in apts:
                apts[suite] = Apt(suite, tmp, mirror=mirror, log=log)
            return apts[suite]

        eet: EetTool | None = None
        for n, ((suite, packages, version), group) in enumerate(todo.items()):
            log(f"[{n + 1}/{len(todo)}] {' + '.join(packages)} {version} ({suite}): {len(group)} photos")
            tree, debs = tmp / f"tree{n}", tmp / f"debs{n}"
            errors = []
            for pkg in packages:
                try:
                    unpack_deb(apt_for(suite).download(pkg, version, debs), tree)
                except FetchError as exc:
                    errors.append(str(exc))
            if len(errors) == len(packages):
                for spec in group:
                    report.skipped[spec.file] = errors[-1]
                log(f"  skipped {len(group)} photos: {errors[-1]}")
                continue
            shutil.rmtree(debs, ignore_errors=True)
            for spec in group:
                try:
                    src = _resolve_member(tree, spec.member)
                    if not src.is_file():
                        raise FetchError(f"{spec.member} not found in {' / '.join(packages)}")
                    part = dest / (spec.file + ".part")
                    part.parent.mkdir(parents=True, exist_ok=True)
                    if spec.eet_key:
                        if eet is None:
                            eet = EetTool(apt_for(_system_codename() or suite), tmp, log)
                        part.unlink(missing_ok=True)
                        eet.extract(src, spec.eet_key, part)
                    else:
                        shutil.copyfile(src, part)
                    got = sha256_file(part)
                    if got != spec.sha256:
                        part.unlink()
                        raise FetchError(f"sha256 mismatch: got {got[:16]}…, manifest says {spec.sha256[:16]}…")
                    os.replace(part, dest / spec.file)
                    report.fetched.append(spec.file)
                except (FetchError, OSError) as exc:
                    report.skipped[spec.file] = str(exc)
                    log(f"  skip {spec.file}: {exc}")
            shutil.rmtree(tree, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- prepare

def load_photo(path: Path, downscale: int = 2) -> np.ndarray:
    """Decode to RGB uint8 (EXIF orientation applied) and shrink by `downscale` with Lanczos.

    Why shrink at all: 75 of the 83 sources are JPEGs of quality ~70 to 100 (a
    quarter at 75), half with 4:2:0 chroma. At full size they carry 8x8 block
    edges, ringing, half-resolution chroma and demosaicing/sensor noise; a model trained to
    reproduce those as "HR" learns to hallucinate them. Halving the size puts
    every one of those below the new Nyquist limit, where a good low-pass
    filter removes them.

    Why Lanczos rather than `Image.reduce(2)` (a 2x2 box): measured on sinusoids,
    the box keeps 0.59 of a 0.3 cycle/px input and 0.38 at 0.375 (the third
    harmonic of an 8-px JPEG grid) - all of it aliased to a false lower
    frequency - and is already down to 0.81 at 80% of the new Nyquist. Pillow's
    Lanczos (3 lobes, widened by the factor) stays at 0.99-1.01 up to 60% of the
    new Nyquist, 0.82 at 80%, and lets through 0.18 at 0.3 and 0.01 from 0.35
    cycle/px on: sharp targets with next to no aliasing; its slight ringing is
    far below what JPEG adds. On this set's JPEGs the mean 8-px block-edge
    excess (`blockiness`: step size on the grid / elsewhere) of 1.53 drops to
    1.10 with Lanczos (4-px grid after halving) against 1.13 with the box.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as src:
        im: Image.Image = ImageOps.exif_transpose(src)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: Pillow's convert("RGB") would clip, so scale to 8 bit first.
            arr16 = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr16 / 257.0 + 0.5, 0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Transparent pixels composite onto mid-grey rather than undefined colour.
            base = Image.new("RGBA", im.size, (128, 128, 128, 255))
            im = Image.alpha_composite(base, im.convert("RGBA"))
        im = im.convert("RGB")
        if downscale > 1:
            w, h = im.size
            w2, h2 = w // downscale, h // downscale
            im = im.crop((0, 0, w2 * downscale, h2 * downscale)).resize((w2, h2), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def blockiness(gray: np.ndarray, period: int) -> float:
    """Mean |step| across `period`-aligned pixel boundaries over the mean elsewhere (1.0 = no grid).

    JPEG's 8x8 blocks show up as a value above 1 at period 8 (period 4 after halving).
    """
    g = gray.astype(np.float32)
    dx = np.abs(np.diff(g, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(g, axis=0)).mean(axis=1)
    ratios = []
    for d in (dx, dy):
        n = len(d) // period * period
        prof = d[:n].reshape(-1, period).mean(axis=0)
        ratios.append(prof[period - 1] / max(1e-6, float(np.delete(prof, period - 1).mean())))
    return float(np.mean(ratios))


def find_photos(photos_dir: Path) -> list[Path]:
    """Image files under `photos_dir`, sorted, as the fallback when no manifest is given."""
    return sorted(p for p in Path(photos_dir).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class PoolEntry(TypedDict):
    """One image of a prepared pool, as listed in index.json."""

    name: str
    offset: int  # bytes into hr.u8
    height: int
    width: int
    sha256: str  # of the source photo


@dataclass
class PrepareReport:
    """What `prepare` wrote and what it skipped (missing, wrong hash, undecodable, benchmark leak)."""

    images: list[PoolEntry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def megapixels(self) -> float:
        return sum(e["height"] * e["width"] for e in self.images) / 1e6

    def summary(self) -> str:
        nbytes = 3 * sum(e["height"] * e["width"] for e in self.images)
        lines = [f"prepared {len(self.images)} images, {self.megapixels:.1f} MP, "
                 f"{nbytes / 2**20:.1f} MiB in {self.seconds:.1f} s"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()] or ["skipped: none"]
        return "\n".join(lines)


def prepare(photos_dir: str | Path, out_dir: str | Path, downscale: int = 2,
            benchmark_dirs: Sequence[str | Path] | None = None, *,
            manifest: str | Path | None = None, log: Log = _say) -> PrepareReport:
    """Pack verified, downscaled, leak-checked photos into ``out_dir/hr.u8`` + ``index.json``.

    `manifest` given: only its files are used, and only if their sha256 matches
    (a wrong or missing file is skipped with the reason). `manifest` None: every
    image under `photos_dir` is used. `benchmark_dirs` None means the shared
    Set5/Set14 HR folders; pass a list to choose (``[]`` turns the check off,
    which only tests should do). Images are written back to back (HWC, uint8) in
    name order, so the same inputs give the same file; the pool and index are
    written under temporary names and renamed at the end (pool first), so a
    trainer that has the old pool memory-mapped keeps reading a whole file.
    """
    from ribsr_cli.training.leakcheck import LeakChecker, default_benchmark_dirs

    t0 = time.perf_counter()
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    if downscale < 1:
        raise ValueError("downscale must be >= 1")
    report = PrepareReport()
    if manifest is not None:
        entries = [(photos_dir / s.file, s.file, s.sha256) for s in read_manifest(Path(manifest))]
    else:
        entries = [(p, p.relative_to(photos_dir).as_posix(), "") for p in find_photos(photos_dir)]
    dirs = default_benchmark_dirs() if benchmark_dirs is None else [Path(d) for d in benchmark_dirs]
    checker = LeakChecker(dirs) if dirs else None
    if checker is None:
        log("warning: no benchmark folders given: the benchmark leak check is OFF")
    else:
        log(f"leak check against {len(checker)} benchmark images from {len(dirs)} folders")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Per-process temporary names: another prepare into the same folder must not collide.
    pool_tmp = out_dir / f".{POOL_FILE}.{os.getpid()}.tmp"
    index_tmp = out_dir / f".{INDEX_FILE}.{os.getpid()}.tmp"
    offset = 0
    with open(pool_tmp, "wb") as pool:
        for path, name, want in sorted(entries, key=lambda e: e[1]):
            if not path.is_file():
                report.skipped[name] = "missing (run scripts/get_training_photos.sh)"
                log(f"skip {name}: missing")
                continue
            digest = sha256_file(path)
            if want and digest != want:
                report.skipped[name] = f"sha256 mismatch: got {digest[:16]}…, manifest says {want[:16]}…"
                log(f"skip {name}: {report.skipped[name]}")
                continue
            try:
                arr = load_photo(path, downscale)
            except (OSError, ValueError) as exc:
                report.skipped[name] = f"cannot decode: {exc}"
                log(f"skip {name}: {report.skipped[name]}")
                continue
            if checker is not None:
                match = checker.check(arr)
                if match is not None:
                    report.skipped[name] = f"matches benchmark image {match.describe()}"
                    log(f"REFUSED {name}: {report.skipped[name]}")
                    continue
            h, w = arr.shape[:2]
            pool.write(np.ascontiguousarray(arr).tobytes())
            report.images.append({"name": name, "offset": offset, "height": h, "width": w, "sha256": digest})
            offset += h * w * 3
            log(f"ok {name}: {w}x{h}")
    report.seconds = time.perf_counter() - t0
    index = {
        "format": "ribsr-hr-pool/1",
        "dtype": "uint8",
        "layout": "HWC RGB, images back to back; offset in bytes",
        "downscale": downscale,
        "filter": "lanczos" if downscale > 1 else "none",
        "total_bytes": offset,
        "benchmarks_checked": [str(d) for d in dirs],
        "images": report.images,
        "skipped": report.skipped,
    }
    index_tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(pool_tmp, out_dir / POOL_FILE)
    os.replace(index_tmp, out_dir / INDEX_FILE)
    return report


# --------------------------------------------------------------------------- pool

class HRPool:
    """Random HR crops from a prepared pool, memory-mapped so the OS pages in only what is read.

    Each call is O(log n) plus the copy of one crop: the per-size table of
    eligible images and their cumulative areas is built once and cached.
    """

    def __init__(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        index_path = out_dir / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{index_path} not found: run scripts/get_training_photos.sh, then "
                f"python -m ribsr_cli.training.photos prepare")
        index = json.loads(index_path.read_text())
        self.entries: list[PoolEntry] = index["images"]
        if not self.entries:
            raise ValueError(f"{index_path} lists no images")
        total = int(index["total_bytes"])
        data = np.memmap(out_dir / POOL_FILE, dtype=np.uint8, mode="r", shape=(total,))
        self._views = []
        for e in self.entries:
            off, h, w = e["offset"], e["height"], e["width"]
            self._views.append(data[off:off + h * w * 3].reshape(h, w, 3))
        self._sizes = np.array([v.shape[:2] for v in self._views], dtype=np.int64)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._views)

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.entries]

    @property
    def megapixels(self) -> float:
        return float(self._sizes.prod(axis=1).sum()) / 1e6

    def image(self, i: int) -> np.ndarray:
        """Read-only (H, W, 3) view of image `i`."""
        return self._views[i]

    def _table(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size not in self._tables:
            ok = np.flatnonzero((self._sizes[:, 0] >= size) & (self._sizes[:, 1] >= size))
            if ok.size == 0:
                raise ValueError(f"no image in the pool is at least {size}x{size}")
            self._tables[size] = (ok, np.cumsum(self._sizes[ok].prod(axis=1)).astype(np.float64))
        return self._tables[size]

    def random_crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A (size, size, 3) uint8 copy from an image chosen with probability ∝ its area."""
        ok, cum = self._table(size)
        i = ok[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(ok) - 1)]
        h, w = self._sizes[i]
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        return np.array(self._views[i][y:y + size, x:x + size])


# --------------------------------------------------------------------------- CLI

def _manifest_arg(value: str) -> Path | None:
    return None if value.lower() in ("", "none") else Path(value)


def main(argv: Iterable[str] | None = None) -> int:
    """``fetch`` exits 0 when every photo is there, 2 when some were skipped; ``prepare`` 0/1."""
    ap = argparse.ArgumentParser(prog="python -m ribsr_cli.training.photos", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and verify the manifest's photos")
    f.add_argument("dest", nargs="?", type=Path,
                   default=Path(os.environ.get("RIBSR_PHOTOS_DIR", "data/photos")), help="default data/photos")
    f.add_argument("--tsv", type=Path, default=None, help=f"manifest (default {default_manifest()})")
    f.add_argument("--workdir", type=Path, default=None, help="where the temporary download folder goes")
    f.add_argument("--mirror", default=os.environ.get("RIBSR_DEBIAN_MIRROR", DEFAULT_MIRROR),
                   help="Debian mirror for suites other than this machine's")
    p = sub.add_parser("prepare", help="downscale, leak-check and pack photos into hr.u8 + index.json")
    p.add_argument("photos_dir", nargs="?", type=Path, default=Path("data/photos"))
    p.add_argument("out_dir", nargs="?", type=Path, default=Path("data/prepared"))
    p.add_argument("--downscale", type=int, default=2)
    p.add_argument("--tsv", type=_manifest_arg, default=default_manifest(),
                   help="manifest to verify against; 'none' packs every image found")
    p.add_argument("--benchmarks", type=Path, action="append", default=[], metavar="DIR",
                   help="extra benchmark HR folder to refuse matches with (repeatable)")
    p.add_argument("--no-default-benchmarks", action="store_true", help="don't add the shared Set5/Set14 HR")
    args = ap.parse_args(None if argv is None else list(argv))
    if args.cmd == "fetch":
        t0 = time.perf_counter()
        report = fetch(args.dest, args.tsv, workdir=args.workdir, mirror=args.mirror)
        print(report.summary())
        print(f"photos in {args.dest} ({time.perf_counter() - t0:.0f} s)")
        return 0 if report.got == report.total else 2
    from ribsr_cli.training.leakcheck import default_benchmark_dirs

    dirs = ([] if args.no_default_benchmarks else default_benchmark_dirs()) + args.benchmarks
    prep = prepare(args.photos_dir, args.out_dir, args.downscale, dirs, manifest=args.tsv)
    print(prep.summary())
    return 0 if prep.images else 1


if __name__ == "__main__":
    sys.exit(main())
