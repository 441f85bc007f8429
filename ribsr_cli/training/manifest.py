"""The training-photo manifest (`<shared>/training-photos.tsv`): one row per photo, with its sha256 and source.

Why a manifest: the training set is reproducible byte for byte from it alone. Each row names a file, its
size, sha256, licence and a free-text `source` column saying which Debian package (suite, version) holds
the photo and where inside it; `parse_source` turns that column into apt terms for `training.fetch`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ribsr_cli.fileutil import sha256_file
from ribsr_cli.errors import RibsrError
from ribsr_cli.paths import shared_dir

MANIFEST_COLUMNS = ["file", "width", "height", "sha256", "source", "license"]


class ManifestError(RibsrError, ValueError):
    """The manifest is missing, or a row of it cannot be read."""


def default_manifest() -> Path:
    """``RIBSR_PHOTOS_TSV`` or ``<shared>/training-photos.tsv``."""
    env = os.environ.get("RIBSR_PHOTOS_TSV")
    return Path(env) if env else shared_dir() / "training-photos.tsv"


def verify_sha256(path: Path, expected: str) -> bool:
    """True when `path` is a regular file whose sha256 equals `expected` (case-insensitive)."""
    return path.is_file() and sha256_file(path) == expected.strip().lower()


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
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError(path, f"cannot read the manifest: {exc.strerror or exc}") from None
    header = lines[0].split("\t") if lines else []
    want = MANIFEST_COLUMNS
    if header[: len(want)] != want:
        raise ManifestError(path, f"header {header} is not {want}")
    specs = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < len(want):
            raise ManifestError(f"{path}:{n}", f"expected {len(want)} tab-separated columns")
        file, w, h, sha, source, lic = cols[: len(want)]
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise ManifestError(f"{path}:{n}", f"file must be a relative path inside DEST: {file!r}")
        try:
            width, height = int(w), int(h)
        except ValueError:
            raise ManifestError(f"{path}:{n}", f"width and height must be integers, got {w!r} x {h!r}") from None
        specs.append(PhotoSpec(file, width, height, sha.lower(), source, lic, **parse_source(source)))
    return specs
