"""`ribsr data fetch|prepare`: the training-photo pipeline, step by step.

`fetch` assembles the manifest's photos from Debian packages (ribsr_cli.training.fetch); `prepare` halves,
leak-checks and packs them into the HR pool `ribsr train --data` reads (ribsr_cli.training.prepare).
Defaults that depend on the environment (RIBSR_PHOTOS_DIR, RIBSR_PHOTOS_TSV, RIBSR_SHARED,
RIBSR_DEBIAN_MIRROR) are read when the command runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = [
    "ribsr data fetch                  # the manifest's photos into data/photos",
    "ribsr data prepare                # halve, leak-check, pack into data/prepared",
    "ribsr data prepare mine/ pool/ --tsv none    # every image under mine/",
    "ribsr train --data data/prepared  # then train on the pool",
]

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


@app.command("fetch")
def fetch(
    dest: Optional[Path] = typer.Argument(None, metavar="DEST",
                                          help="Where the photos go (default $RIBSR_PHOTOS_DIR, else data/photos)."),
    tsv: Optional[Path] = typer.Option(None, "--tsv", metavar="FILE",
                                       help="Manifest (default $RIBSR_PHOTOS_TSV, else <shared>/training-photos.tsv)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", metavar="DIR",
                                           help="Where the temporary download folder goes."),
    mirror: Optional[str] = typer.Option(None, "--mirror", metavar="URL",
                                         help="Debian mirror for suites other than this machine's "
                                              "(default $RIBSR_DEBIAN_MIRROR, else deb.debian.org)."),
) -> None:
    """Download and verify the manifest's photos (apt-get download + dpkg-deb -x; installs nothing).

    Exit status 0 when every photo is there, 2 when some were skipped (the summary says which and why).
    """
    from ribsr_cli.training.fetch import DEFAULT_MIRROR
    from ribsr_cli.training.fetch import fetch as fetch_photos

    dest = dest or Path(os.environ.get("RIBSR_PHOTOS_DIR") or "data/photos")
    t0 = time.perf_counter()
    report = fetch_photos(dest, tsv, workdir=workdir,
                          mirror=mirror or os.environ.get("RIBSR_DEBIAN_MIRROR") or DEFAULT_MIRROR)
    typer.echo(report.summary())
    typer.echo(f"photos in {dest} ({time.perf_counter() - t0:.0f} s)")
    if report.got != report.total:
        raise typer.Exit(2)


@app.command("prepare")
def prepare(
    photos_dir: Path = typer.Argument(Path("data/photos"), metavar="PHOTOS_DIR", help="Verified photos."),
    out_dir: Path = typer.Argument(Path("data/prepared"), metavar="OUT_DIR", help="Where hr.u8 and index.json go."),
    downscale: int = typer.Option(2, "--downscale", min=1, metavar="N", help="Shrink factor (Lanczos) before packing."),
    tsv: Optional[str] = typer.Option(None, "--tsv", metavar="FILE",
                                      help="Manifest to verify against (default $RIBSR_PHOTOS_TSV, else "
                                           "<shared>/training-photos.tsv); 'none' packs every image found."),
    benchmarks: Optional[List[Path]] = typer.Option(None, "--benchmarks", metavar="DIR",
                                                    help="Extra benchmark HR folder to refuse matches with "
                                                         "(repeatable)."),
    no_default_benchmarks: bool = typer.Option(False, "--no-default-benchmarks",
                                               help="Don't add the shared Set5/Set14 HR folders."),
) -> None:
    """Halve the photos (Lanczos), refuse benchmark look-alikes, pack the rest into hr.u8 + index.json.

    Exit status 0 when at least one image was packed, 1 when none was.
    """
    from ribsr_cli.training.leakcheck import default_benchmark_dirs
    from ribsr_cli.training.manifest import default_manifest
    from ribsr_cli.training.prepare import prepare as prepare_pool

    manifest = default_manifest() if tsv is None else None if tsv.lower() in ("", "none") else Path(tsv)
    dirs = ([] if no_default_benchmarks else default_benchmark_dirs()) + list(benchmarks or [])
    report = prepare_pool(photos_dir, out_dir, downscale, dirs, manifest=manifest)
    typer.echo(report.summary())
    if not report.images:
        raise typer.Exit(1)
