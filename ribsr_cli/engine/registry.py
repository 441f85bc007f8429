"""Resolution of a user's `-m` value into a loaded, verified network.

In order: the shipped default for the scale (no `-m`), `clean`/`real` (the shipped model of that variant),
a shipped or stored model name (`catalog`), else a checkpoint path (with an optional architecture): SST
checkpoints through ribsr's own engine, any other single-image upscaling model through spandrel
(`engine/foreign.py`, the optional `models` extra); `--denoise` mixes a scale's clean and real models
(`engine/interpolate.py`). Shipped and stored files are verified against their recorded sha256 before
loading.

Two steps, so a name is decided once: `locate` says which weights a `-m` value names (and so the model's
display name) without reading them, which is all `ribsr upscale` needs to plan output names, and
`load_model` reads them into a `LoadedModel` carrying that name and where the weights came from
(source = shipped | stored | file, sha256), so reports record exactly which weights ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from ribsr_cli.catalog import VARIANTS, ModelEntry, all_models, default_model, find_model
from ribsr_cli.catalog import shipped_scales, variant_model, verify, weights_dir
from ribsr_cli.engine.checkpoint import CheckpointError, is_sst, load_model as load_sst, model_from_state
from ribsr_cli.engine.checkpoint import read_state_dict
from ribsr_cli.engine import foreign  # spandrel itself is imported only when a model needs it
from ribsr_cli.engine.runner import LoadedModel
from ribsr_cli.fileutil import sha256_file


@dataclass(frozen=True)
class ModelRef:
    """Which weights a `-m` value names, before any is read: a catalog entry, a file, or a --denoise mix."""

    name: str  # the display name the loaded model will carry
    scale: int  # the scale asked for (a file's own scale is checked when it is loaded)
    entry: ModelEntry | None = field(default=None, repr=False)
    path: Path | None = None
    arch: str | None = None  # --arch, for a file
    mix: tuple[ModelEntry, ModelEntry, float] | None = field(default=None, repr=False)  # --denoise: (clean, real, S)


def locate(model: str | None, scale: int, arch: str | None = None, denoise: float | None = None) -> ModelRef:
    """The weights a `-m` value names at `scale`; every failure is a one-line CheckpointError (ValueError for
    a --denoise strength outside 0..1). Reads no weights.

    `-m clean` / `-m real` (when no model has that name) pick the shipped model of that variant at `scale`;
    `denoise` mixes the scale's clean and real models.
    """
    if denoise is not None:
        from ribsr_cli.engine.interpolate import check_strength, denoise_name, denoise_pair

        strength = check_strength(denoise)
        clean, real = denoise_pair(model, scale)
        return ModelRef(denoise_name(clean, strength), scale, mix=(clean, real, strength))
    if model is not None and model.lower() in VARIANTS and find_model(model) is None:
        entry = variant_model(model.lower(), scale)
        if entry is None:
            have = shipped_scales(model.lower())
            raise CheckpointError(model, f"no shipped {model.lower()} model for x{scale} "
                                         f"({model.lower()} models ship for: {', '.join(f'x{s}' for s in have) or 'none'})")
        return ModelRef(entry.name, scale, entry=entry)
    if model is None:
        entry = default_model(scale)
        if entry is None:
            available = shipped_scales()
            raise CheckpointError(weights_dir(), f"no shipped model for x{scale} (shipped scales: {available or 'none'})")
        return ModelRef(entry.name, scale, entry=entry)
    entry = find_model(model)
    if entry is not None:
        return ModelRef(entry.name, scale, entry=entry)
    if not Path(model).exists():
        names = ", ".join(e.name for e in all_models()) or "none"
        raise CheckpointError(model, f"neither a shipped or stored model ({names}) nor an existing file")
    return ModelRef(Path(model).stem, scale, path=Path(model), arch=arch)


def load_model(ref: ModelRef, device: str = "cpu") -> LoadedModel:
    """The network `ref` names, verified and labelled; a network of another scale is a CheckpointError."""
    if ref.mix is not None:
        from ribsr_cli.engine.interpolate import load_denoised

        return load_denoised(*ref.mix, device=device)
    if ref.entry is not None:
        loaded = load_entry(ref.entry, device)
    else:
        assert ref.path is not None
        loaded = LoadedModel.of(load_checkpoint(ref.path, ref.arch, device=device), ref.name, "file",
                                sha256_file(ref.path))
    if loaded.scale != ref.scale:
        raise CheckpointError(ref.path or ref.name, f"model upscales x{loaded.scale}, but x{ref.scale} was asked")
    return loaded


def resolve(model: str | None, scale: int, arch: str | None = None, device: str = "cpu",
            denoise: float | None = None) -> LoadedModel:
    """`load_model(locate(...))`: the loaded model a `-m` value names at `scale`."""
    return load_model(locate(model, scale, arch, denoise), device)


def load_checkpoint(path: str | Path, arch: str | None = None, device: str = "cpu") -> nn.Module:
    """Any single-image upscaling checkpoint: SST through ribsr's engine (`--arch` applies to SST only),
    anything else through spandrel (the optional `models` extra); one CheckpointError line on failure.
    The file is read once, here, whichever way it goes."""
    state, metadata = read_state_dict(path)
    if arch is not None or is_sst(state, metadata):
        return model_from_state(state, metadata, path, arch, device=device)
    return foreign.load_foreign(state, path, device)


def load_entry(entry: ModelEntry, device: str = "cpu") -> LoadedModel:
    """A shipped or stored model, loaded after its sha256 check (stored foreign models through spandrel)."""
    path = verify(entry)
    if entry.family == foreign.FAMILY:
        net = foreign.load_foreign(read_state_dict(path)[0], path, device)
    else:
        net = load_sst(path, device=device)
    return LoadedModel.of(net, entry.name, entry.source, entry.sha256)
