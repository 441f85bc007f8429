"""Fetch the manifest's photos from Debian packages, verifying each one's sha256.

Why Debian packages: a public, versioned, checksummed archive this project's machines can reach, so the
training set is reproducible byte for byte from the manifest (`training.manifest`) alone.

`fetch` downloads the `.deb`s a manifest names with `apt-get download` (never installs anything, never
touches the system's apt settings), unpacks them with `dpkg-deb -x` in a temporary folder, copies (or, for
enlightenment's `.edj` themes, `eet -x`-extracts) each photo and keeps it only if its sha256 matches.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ribsr_cli.errors import RibsrError
from ribsr_cli.fileutil import atomic_path, sha256_file
from ribsr_cli.training.manifest import PhotoSpec, default_manifest, read_manifest, verify_sha256
from ribsr_cli.training.progress import Log, to_stderr

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class FetchError(RibsrError):
    """A download, unpack or extraction step failed; the message says which and why.

    `fetch` turns each into the skip reason of the photos it concerns, so it never ends a run.
    """


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
                 keyring: Path = DEFAULT_KEYRING, log: Log = to_stderr) -> None:
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

    def __init__(self, apt: Apt, workdir: Path, log: Log = to_stderr) -> None:
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
          mirror: str = DEFAULT_MIRROR, log: Log = to_stderr) -> FetchReport:
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
                    (dest / spec.file).parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(dest / spec.file) as part:  # a failed check removes it, the target stays
                        if spec.eet_key:
                            if eet is None:
                                eet = EetTool(apt_for(_system_codename() or suite), tmp, log)
                            eet.extract(src, spec.eet_key, part)
                        else:
                            shutil.copyfile(src, part)
                        got = sha256_file(part)
                        if got != spec.sha256:
                            raise FetchError(f"sha256 mismatch: got {got[:16]}…, manifest says {spec.sha256[:16]}…")
                    report.fetched.append(spec.file)
                except (FetchError, OSError) as exc:
                    report.skipped[spec.file] = str(exc)
                    log(f"  skip {spec.file}: {exc}")
            shutil.rmtree(tree, ignore_errors=True)
    return report
