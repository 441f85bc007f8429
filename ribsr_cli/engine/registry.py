"""Resolution of a user's `-m` value into a loaded, verified network.

In order: the shipped default for the scale (no `-m`), a shipped or stored model name (`catalog`), else a
checkpoint path (with an optional architecture): SST checkpoints through ribsr's own engine, any other
single-image upscaling model through spandrel (`engine/foreign.py`, the optional `models` extra). Shipped
and stored files are verified against their recorded sha256 before loading. The network comes back labelled with where it came from
(`net.model_name`, `net.source` = shipped | stored | file, `net.sha256`), so reports can record exactly
which weights ran.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ribsr_cli.catalog import VARIANTS, ModelEntry, all_models, default_model, find_model, sha256_file
from ribsr_cli.catalog import shipped_scales, variant_model, verify, weights_dir
from ribsr_cli.engine.checkpoint import CheckpointError, is_sst, load_model, model_from_state, read_state_dict
from ribsr_cli.engine import foreign  # spandrel itself is imported only when a model needs it


def label(net: nn.Module, name: str, source: str, sha256: str) -> nn.Module:
    """Mark a network with the weights it carries, for every report (`model_name`, `source`, `sha256`)."""
    net.model_name, net.source, net.sha256 = name, source, sha256  # type: ignore[attr-defined]
    return net


def load_checkpoint(path: str | Path, arch: str | None = None, device: str = "cpu") -> nn.Module:
    """Any single-image upscaling checkpoint: SST through ribsr's engine (`--arch` applies to SST only),
    anything else through spandrel (the optional `models` extra); one CheckpointError line on failure.
    The file is read once, here, whichever way it goes."""
    state, metadata = read_state_dict(path)
    if arch is not None or is_sst(state, metadata):
        return model_from_state(state, metadata, path, arch, device=device)
    return foreign.load_foreign(state, path, device)


def load_entry(entry: ModelEntry, device: str = "cpu") -> nn.Module:
    """A shipped or stored model, loaded after its sha256 check (stored foreign models through spandrel)."""
    path = verify(entry)
    if entry.family == foreign.FAMILY:
        net = foreign.load_foreign(read_state_dict(path)[0], path, device)
    else:
        net = load_model(path, device=device)
    return label(net, entry.name, entry.source, entry.sha256)


def resolve(model: str | None, scale: int, arch: str | None = None, device: str = "cpu",
            denoise: float | None = None) -> tuple[str, nn.Module]:
    """(display name, model) for a `-m` value; every failure is a one-line CheckpointError.

    `-m clean` / `-m real` (when no model has that name) pick the shipped model of that variant at `scale`;
    `denoise` mixes the scale's clean and real models (`engine/interpolate.py`).
    """
    if denoise is not None:
        from ribsr_cli.engine.interpolate import load_denoised

        return load_denoised(model, scale, denoise, device)
    if model is not None and model.lower() in VARIANTS and find_model(model) is None:
        entry = variant_model(model.lower(), scale)
        if entry is None:
            have = shipped_scales(model.lower())
            raise CheckpointError(model, f"no shipped {model.lower()} model for x{scale} "
                                         f"({model.lower()} models ship for: {', '.join(f'x{s}' for s in have) or 'none'})")
        return entry.name, load_entry(entry, device)
    if model is None:
        entry = default_model(scale)
        if entry is None:
            available = shipped_scales()
            raise CheckpointError(weights_dir(), f"no shipped model for x{scale} (shipped scales: {available or 'none'})")
        return entry.name, load_entry(entry, device)
    entry = find_model(model)
    if entry is not None:
        net = load_entry(entry, device)
        name = entry.name
    else:
        if not Path(model).exists():
            names = ", ".join(e.name for e in all_models()) or "none"
            raise CheckpointError(model, f"neither a shipped or stored model ({names}) nor an existing file")
        net = label(load_checkpoint(model, arch, device=device), Path(model).stem, "file", sha256_file(model))
        name = Path(model).stem
    if net.scale != scale:
        raise CheckpointError(model, f"model upscales x{net.scale}, but x{scale} was asked")
    return name, net
