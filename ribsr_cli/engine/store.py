"""The user's model store: `ribsr models add` / `remove`.

Adding a checkpoint proves it before keeping it: the file is read safely (safetensors, or `.pth` with
`weights_only=True`), its architecture is taken from the file, from `--arch`, or detected from the key layout,
a tiny forward must give a finite image of the right size, and only then is it written as ribsr's
safetensors (architecture and provenance in its metadata) with a JSON card recording its sha256. A foreign
checkpoint (not SST) is loaded and proved through spandrel and stored as safetensors of spandrel's canonical
weights, its card saying `family: spandrel` and the architecture's name; it is loaded back through spandrel.

Nothing is ever half-written: both files are written to hidden temporary names and renamed into place
(ribsr_cli.fileutil), the card last (a model exists only once its card does), and any failure or Ctrl-C
removes the temporaries.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ribsr_cli import __version__
from ribsr_cli.catalog import CARD_SUFFIX, WEIGHTS_SUFFIX, ModelEntry, check_name, find_model, read_card, store_dir
from ribsr_cli.engine.checkpoint import _arch_from_argument, preset_name_of, save_model
from ribsr_cli.engine.foreign import FAMILY, foreign_state_dict
from ribsr_cli.engine.presets import normalize_arch
from ribsr_cli.engine.registry import load_checkpoint
from ribsr_cli.errors import CheckpointError, ModelStoreError
from ribsr_cli.fileutil import atomic_path, atomic_write_text, sha256_file

SMOKE_SIDE = 20  # LR side of the proving forward: not a multiple of any window, so padding is exercised too


def default_name(path: str | Path) -> str:
    """A store name from a file name: its stem with anything outside the allowed characters replaced by '-'."""
    stem = Path(path).name.split(".")[0] or "model"
    cleaned = "".join(c if c.isalnum() or c in "._+-" else "-" for c in stem).strip("-._+")
    return (cleaned or "model")[:64]


def prove(model: torch.nn.Module, path: str | Path) -> None:
    """A tiny forward: the model must return a finite image `scale` times larger, or it is refused."""
    x = torch.rand(1, 3, SMOKE_SIDE, SMOKE_SIDE, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign checkpoint is its own fault
        raise CheckpointError(path, f"the model fails a test forward: {str(exc).splitlines()[0][:160]}") from None
    expected = (1, 3, SMOKE_SIDE * model.scale, SMOKE_SIDE * model.scale)
    if tuple(y.shape) != expected or not torch.isfinite(y).all():
        raise CheckpointError(path, f"the model's test forward gave {tuple(y.shape)} (expected {expected}) "
                                    f"or non-finite values")


def add_model(path: str | Path, name: str | None = None, arch: str | None = None) -> ModelEntry:
    """Prove a checkpoint and keep it in the store under `name`; returns the new entry."""
    source = Path(path)
    name = name or default_name(source)
    check_name(name)
    model = load_checkpoint(source, arch)  # the one SST-or-spandrel routing rule, and the only read of the file
    if getattr(model, "family", None) == FAMILY:
        return _add_foreign(source, name, model)
    if arch is not None:  # a file's own metadata wins over --arch in load_model: a disagreement is an error
        try:
            asked = normalize_arch(_arch_from_argument(arch))
        except ValueError as exc:
            raise CheckpointError(source, str(exc)) from None
        if asked != model.arch:
            raise CheckpointError(source, f"--arch {arch} does not match the architecture stored in the file")
    prove(model, source)
    arch_name = (arch if arch and preset_name_of(model.arch) == arch else None) or preset_name_of(model.arch) \
        or getattr(model, "provenance", {}).get("arch_name") or "custom"
    provenance = _provenance(source, getattr(model, "provenance", {}) or {})
    card = {"scale": model.scale, "arch_name": arch_name, "arch": model.arch,
            "params": sum(p.numel() for p in model.parameters()), "provenance": provenance}
    return _commit(name, lambda tmp: save_model(model, tmp, provenance), card)


def _add_foreign(source: Path, name: str, model: torch.nn.Module) -> ModelEntry:
    """A spandrel architecture (ESRGAN, Compact, SwinIR, ...): proved like SST, then kept as safetensors of
    spandrel's canonical weights, with `family: spandrel` and the architecture's name on the card."""
    from safetensors.torch import save_file

    prove(model, source)
    provenance = _provenance(source, {})
    arch = {"spandrel_id": model.arch_id, "tags": model.tags, "input_channels": model.input_channels,
            "size_multiple": model.multiple_of, "size_minimum": model.minimum, "tiling": model.tiling}
    metadata = {"ribsr_family": FAMILY, "spandrel_arch": model.arch_id, "ribsr_provenance": json.dumps(provenance),
                "format": "pt"}
    card = {"family": FAMILY, "scale": model.scale, "arch_name": model.arch_name, "arch": arch,
            "params": sum(p.numel() for p in model.parameters()), "provenance": provenance}
    return _commit(name, lambda tmp: save_file(foreign_state_dict(model), str(tmp), metadata=metadata), card)


def _provenance(source: Path, upstream: dict[str, Any]) -> dict[str, Any]:
    return {"source_file": source.name, "source_sha256": sha256_file(source),
            "added": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "ribsr_version": __version__, "upstream": upstream}


def _commit(name: str, write_weights: Callable[[Path], None], card_fields: dict[str, Any]) -> ModelEntry:
    """Write the weights, then the card, each all or nothing (ribsr_cli.fileutil); the model exists from the
    card's rename on, and a card that cannot be written takes the new weights file away with it."""
    folder = store_dir()
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}{WEIGHTS_SUFFIX}"
    card = folder / f"{name}{CARD_SUFFIX}"
    with atomic_path(weights) as tmp_weights:
        write_weights(tmp_weights)
        entry = {"name": name, "file": weights.name, "sha256": sha256_file(tmp_weights), **card_fields}
    try:
        atomic_write_text(card, json.dumps(entry, indent=2) + "\n")  # the model exists from this rename on
    except BaseException:
        if not card.exists():  # not yet renamed: no model, so no weights either
            weights.unlink(missing_ok=True)
        raise
    return read_card(card)


def remove_model(name: str) -> str:
    """Delete a stored model (card first, so it stops existing before its weights go); returns the name removed.

    A card that can no longer be read is removed too, so a damaged entry never blocks its own name.
    """
    try:
        entry = find_model(name)
    except ModelStoreError:  # unreadable card of that exact name
        entry = None
        card = store_dir() / f"{name}{CARD_SUFFIX}"
        if card.is_file():
            card.unlink()
            (store_dir() / f"{name}{WEIGHTS_SUFFIX}").unlink(missing_ok=True)
            return name
    if entry is None or entry.source != "stored":
        reason = "a shipped model cannot be removed" if entry is not None else "no stored model of this name"
        raise ModelStoreError(name, f"{reason} (see `ribsr models`)")
    (entry.path.parent / f"{entry.name}{CARD_SUFFIX}").unlink(missing_ok=True)
    entry.path.unlink(missing_ok=True)
    return entry.name
