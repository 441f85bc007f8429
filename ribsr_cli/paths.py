"""Where ribsr's data lives outside the package: the shared folder and its benchmark sets.

The shared folder (benchmark sets, reference fixtures, the training-photo manifest) sits beside the
repository and is never committed; `RIBSR_SHARED` points elsewhere. Defaults that depend on it are
resolved when a command runs, not when a module is imported, so they do not depend on the working
directory and honour an `RIBSR_SHARED` set after import (tests do that).

Per-user folders: `data_home` (the model store) and `cache_home` (measurements that can be redone, such as
the attention-strategy probe), both under `$RIBSR_HOME` when it is set.

This module imports nothing but the standard library (and platformdirs, lazily), so any layer may use it. (Which files count as
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


def data_home() -> Path:
    """ribsr's per-user data folder: `$RIBSR_HOME`, else the platform's user data dir (platformdirs)."""
    env = os.environ.get("RIBSR_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("ribsr", appauthor=False))


def cache_home() -> Path:
    """ribsr's per-user cache folder: `$RIBSR_HOME/cache`, else the platform's user cache dir. Deleting it
    loses nothing but time (what is there gets measured again)."""
    env = os.environ.get("RIBSR_HOME")
    if env:
        return Path(env).expanduser() / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("ribsr", appauthor=False))
