"""Where ribsr's data lives outside the package: the shared folder and its benchmark sets.

The shared folder (benchmark sets, reference fixtures, the training-photo manifest) sits beside the
repository and is never committed; `RIBSR_SHARED` points elsewhere. Defaults that depend on it are
resolved when a command runs, not when a module is imported, so they do not depend on the working
directory and honour an `RIBSR_SHARED` set after import (tests do that).

This module imports nothing but the standard library, so any layer may use it. (Which files count as
images when a folder is scanned is `ribsr_cli.imaging.io.IMAGE_EXTENSIONS`: what the reader decodes.)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only shared folder: `RIBSR_SHARED`, else `<repository>/../shared` (whether or not it exists)."""
    env = os.environ.get("RIBSR_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def benchmarks_dir() -> Path:
    """`<shared>/benchmarks`: one folder per benchmark set (Set5, Set14), each with HR/ and LR_bicubic/."""
    return shared_dir() / "benchmarks"
