"""Where models live and what they are, read without torch: the shipped weights and the user's model store.

Two sources answer a model name:
- **shipped**: the package data folder `ribsr_cli/weights` of an installed wheel (built from the repository's
  top-level `weights/`, its single source in git), found through `importlib.resources`; in a source checkout
  that is not installed, the repository's `weights/` itself; `$RIBSR_WEIGHTS_DIR` overrides both.
- **stored**: models the user added with `ribsr models add`, in `<data dir>/models` (platformdirs' user data
  folder, e.g. `~/.local/share/ribsr` on Linux; `$RIBSR_HOME` overrides). Each stored model is a
  `NAME.safetensors` with a `NAME.json` card beside it; the card is written last, so a model without a card
  (an interrupted add) does not exist.

Every file is checked against the sha256 its manifest or card records before it is loaded (`verify`).
Listing reads only JSON, so `ribsr models` answers without importing torch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ribsr_cli.errors import CheckpointError, ModelStoreError
from ribsr_cli.fileutil import sha256_file
from ribsr_cli.paths import REPO_ROOT, data_home

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
CARD_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".safetensors"


# ---- folders ---------------------------------------------------------------------------------------

def source_weights_dir() -> Path:
    """The repository's top-level `weights/` (exists only in a source checkout)."""
    return REPO_ROOT / "weights"


def weights_dir() -> Path:
    """The folder of the shipped weights: `$RIBSR_WEIGHTS_DIR`, else the installed package data, else the checkout's."""
    env = os.environ.get("RIBSR_WEIGHTS_DIR")
    if env:
        return Path(env)
    try:
        manifest_file = resources.files("ribsr_cli.weights").joinpath("MANIFEST.json")
        if isinstance(manifest_file, Path) and manifest_file.is_file():
            return manifest_file.parent
    except ModuleNotFoundError:  # a checkout run without installing: no ribsr_cli.weights package
        pass
    return source_weights_dir()


def store_dir() -> Path:
    return data_home() / "models"


# ---- entries -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    """One usable model: what `-m NAME` finds, and what `ribsr models` lists."""

    name: str
    scale: int
    source: str  # "shipped" or "stored"
    path: Path  # the weights file
    sha256: str
    arch_name: str = "?"
    params: int = 0
    default: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    cpu_seconds_per_input_mp: float | None = None
    arch: dict[str, Any] = field(default_factory=dict)  # the network_g the weights were made for
    family: str = "sst"  # "sst" (ribsr's engine) or "spandrel" (a foreign architecture, loaded through spandrel)
    variant: str = "clean"  # shipped models: "clean" (bicubic-trained) or "real" (trained on camera-like damage)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (for `ribsr models --json` and reports)."""
        return {"name": self.name, "scale": self.scale, "source": self.source, "path": str(self.path),
                "sha256": self.sha256, "arch_name": self.arch_name, "params": self.params, "default": self.default,
                "metrics": self.metrics, "provenance": self.provenance,
                "cpu_seconds_per_input_mp": self.cpu_seconds_per_input_mp, "family": self.family,
                "variant": self.variant if self.source == "shipped" else None}


def manifest() -> list[dict[str, Any]]:
    """The shipped models' manifest entries (empty when no weights folder is found)."""
    path = weights_dir() / "MANIFEST.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["models"]


def shipped_models() -> list[ModelEntry]:
    folder = weights_dir()
    return [ModelEntry(name=e["name"], scale=int(e["scale"]), source="shipped", path=folder / e["file"],
                       sha256=e["sha256"], arch_name=e.get("arch_name", "?"), params=int(e.get("params", 0)),
                       default=bool(e.get("default")), metrics=e.get("metrics", {}),
                       provenance=e.get("training", {}), cpu_seconds_per_input_mp=e.get("cpu_seconds_per_input_mp"),
                       arch=e.get("arch", {}), variant=e.get("variant", "clean"))
            for e in manifest()]


def read_card(card: Path) -> ModelEntry:
    """A stored model's entry from its JSON card; a card that cannot be read is a ModelStoreError."""
    try:
        data = json.loads(card.read_text())
        return ModelEntry(name=data["name"], scale=int(data["scale"]), source="stored",
                          path=card.with_name(data["file"]), sha256=data["sha256"],
                          arch_name=data.get("arch_name", "?"), params=int(data.get("params", 0)),
                          metrics=data.get("metrics", {}), provenance=data.get("provenance", {}),
                          arch=data.get("arch", {}), family=data.get("family", "sst"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(card, f"unreadable model card ({exc}); remove it with `ribsr models remove`") from None


def stored_models() -> list[ModelEntry]:
    """Models in the user's store, by name; unreadable cards are skipped here (and reported when named)."""
    folder = store_dir()
    if not folder.is_dir():
        return []
    entries = []
    for card in sorted(folder.glob(f"*{CARD_SUFFIX}")):
        if card.name.startswith("."):
            continue
        try:
            entries.append(read_card(card))
        except ModelStoreError:
            continue
    return entries


def all_models() -> list[ModelEntry]:
    """Shipped models first (as the manifest orders them), then stored ones by name."""
    return shipped_models() + stored_models()


def find_model(name: str) -> ModelEntry | None:
    """The shipped or stored model of that name (case-insensitive), or None."""
    for entry in shipped_models():
        if entry.name.lower() == name.lower():
            return entry
    card = _card_path(name)
    if card is not None and card.is_file():
        return read_card(card)
    for entry in stored_models():  # a card whose file name differs in case
        if entry.name.lower() == name.lower():
            return entry
    return None


def default_model(scale: int) -> ModelEntry | None:
    """The shipped default for a scale: the entry marked default, else the first of that scale."""
    candidates = [e for e in shipped_models() if e.scale == scale]
    marked = [e for e in candidates if e.default]
    return (marked or candidates or [None])[0]


VARIANTS = ("clean", "real")  # also the `-m` aliases for the shipped model of that variant at the asked scale


def variant_model(variant: str, scale: int) -> ModelEntry | None:
    """The shipped model of a variant at a scale (`-m real`, `-m clean`): the scale's default if it is of that
    variant, else the first of that variant in the manifest."""
    candidates = [e for e in shipped_models() if e.scale == scale and e.variant == variant]
    marked = [e for e in candidates if e.default]
    return (marked or candidates or [None])[0]


def shipped_scales(variant: str | None = None) -> list[int]:
    """The scales shipped models cover (of one variant, when given), for "x3 is not shipped" messages."""
    return sorted({e.scale for e in shipped_models() if variant is None or e.variant == variant})


def _card_path(name: str) -> Path | None:
    return store_dir() / f"{name}{CARD_SUFFIX}" if NAME_PATTERN.match(name) else None


def check_name(name: str) -> None:
    """Refuse a store name that is malformed or already taken by a shipped or stored model."""
    if not NAME_PATTERN.match(name):
        raise ModelStoreError(name, "not a valid model name: use letters, digits and . _ + - (at most 64, "
                                    "starting with a letter or digit); pick one with --name")
    taken = find_model(name)
    if taken is not None:
        raise ModelStoreError(name, f"a {taken.source} model already has this name ({taken.path}); "
                                    f"pick another with --name" + (" or `ribsr models remove` it first"
                                                                    if taken.source == "stored" else ""))


def verify(entry: ModelEntry) -> Path:
    """The entry's weights file, after checking it exists and still has the recorded sha256."""
    if not entry.path.is_file():
        raise CheckpointError(entry.path, f"the {entry.source} model {entry.name!r} has lost its weights file")
    actual = sha256_file(entry.path)
    if actual != entry.sha256:
        advice = ("the file is damaged; reinstall ribsr" if entry.source == "shipped" else
                  "the file was changed or damaged after it was stored; `ribsr models remove` it and add it again")
        error = CheckpointError if entry.source == "shipped" else ModelStoreError
        raise error(entry.path, f"sha256 mismatch (recorded {entry.sha256[:12]}…, file {actual[:12]}…): {advice}")
    return entry.path
