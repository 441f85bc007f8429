"""Shipped weights: `weights/MANIFEST.json` names each model, its scale and sha256.

Resolution of a user's `-m` value: a shipped model name, else a checkpoint path
(with an optional architecture), else the shipped default for the scale.
Shipped files are verified against their sha256 before loading.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ribsr_cli.engine.checkpoint import CheckpointError, load_model
from ribsr_cli.engine.network import SST


def weights_dir() -> Path:
    """`$RIBSR_WEIGHTS_DIR`, else the repository's `weights/` beside the package."""
    env = os.environ.get("RIBSR_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def manifest() -> list[dict[str, Any]]:
    path = weights_dir() / "MANIFEST.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["models"]


@functools.lru_cache(maxsize=64)
def sha256_of(path: str, mtime: float) -> str:  # mtime keys the cache on file changes
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_entry(name: str) -> dict[str, Any] | None:
    for entry in manifest():
        if entry["name"].lower() == name.lower():
            return entry
    return None


def default_entry(scale: int) -> dict[str, Any] | None:
    """The shipped default for a scale: the entry marked default, else the first of that scale."""
    candidates = [e for e in manifest() if e["scale"] == scale]
    marked = [e for e in candidates if e.get("default")]
    return (marked or candidates or [None])[0]


def load_shipped(entry: dict[str, Any], device: str = "cpu") -> SST:
    path = weights_dir() / entry["file"]
    if not path.is_file():
        raise CheckpointError(path, "shipped weights file is missing")
    actual = sha256_of(str(path), path.stat().st_mtime)
    if actual != entry["sha256"]:
        raise CheckpointError(path, f"sha256 mismatch (expected {entry['sha256'][:12]}…, got {actual[:12]}…): file is damaged")
    return load_model(path, device=device)


def resolve(model: str | None, scale: int, arch: str | None = None, device: str = "cpu") -> tuple[str, SST]:
    """(display name, model) for a `-m` value; every failure is a one-line CheckpointError."""
    if model is None:
        entry = default_entry(scale)
        if entry is None:
            available = sorted({e["scale"] for e in manifest()})
            raise CheckpointError(weights_dir(), f"no shipped model for x{scale} (shipped scales: {available or 'none'})")
        return entry["name"], load_shipped(entry, device)
    entry = shipped_entry(model)
    if entry is not None:
        net = load_shipped(entry, device)
        name = entry["name"]
    else:
        if not Path(model).exists():
            names = ", ".join(e["name"] for e in manifest()) or "none"
            raise CheckpointError(model, f"neither a shipped model ({names}) nor an existing file")
        net = load_model(model, arch, device=device)
        name = Path(model).stem
    if net.scale != scale:
        raise CheckpointError(model, f"model upscales x{net.scale}, but x{scale} was asked")
    return name, net
