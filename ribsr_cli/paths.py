"""Where ribsr's data lives outside the package, and which files count as images when a folder is scanned.

The shared folder (benchmark sets, reference fixtures, the training-photo manifest) sits beside the
repository and is never committed; `RIBSR_SHARED` points elsewhere. Defaults that depend on it are
resolved when a command runs, not when a module is imported, so they do not depend on the working
directory and honour an `RIBSR_SHARED` set after import (tests do that).

This module imports nothing but the standard library, so any layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Suffixes of the images a folder scan picks up for training photos and benchmark sets: the formats
# Pillow decodes losslessly or as shipped (PPM/PGM included: some benchmark mirrors use them).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def shared_dir() -> Path:
    """The read-only shared folder: `RIBSR_SHARED`, else `<repository>/../shared` (whether or not it exists)."""
    env = os.environ.get("RIBSR_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def benchmarks_dir() -> Path:
    """`<shared>/benchmarks`: one folder per benchmark set (Set5, Set14), each with HR/ and LR_bicubic/."""
    return shared_dir() / "benchmarks"
