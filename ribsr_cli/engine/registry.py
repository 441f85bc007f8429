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

from ribsr_cli.catalog import ModelEntry, all_models, default_model, find_model, sha256_file, verify
from ribsr_cli.catalog import VARIANTS, variant_model
from ribsr_cli.catalog import manifest, weights_dir  # noqa: F401 - re-exported for existing callers
from ribsr_cli.engine.checkpoint import ARCH_KEY, CheckpointError, load_model, read_state_dict

SST_MARKER_KEYS = ("proj.weight", "body.0.0.norm_attn.weight")  # what every SST/RIB state dict has


def _label(net: nn.Module, name: str, source: str, sha256: str) -> nn.Module:
    net.model_name, net.source, net.sha256 = name, source, sha256  # type: ignore[attr-defined]
    return net


def is_sst(state: dict, metadata: dict) -> bool:
    """ribsr's own format, or the authors' SST layout: these go to ribsr's engine, never to spandrel."""
    return ARCH_KEY in metadata or all(k in state for k in SST_MARKER_KEYS)


def load_checkpoint(path: str | Path, arch: str | None = None, device: str = "cpu") -> nn.Module:
    """Any single-image upscaling checkpoint: SST through ribsr's engine (`--arch` applies to SST only),
    anything else through spandrel (the optional `models` extra); one CheckpointError line on failure."""
    state, metadata = read_state_dict(path)
    if arch is not None or is_sst(state, metadata):
        return load_model(path, arch, device=device)
    from ribsr_cli.engine.foreign import load_foreign

    return load_foreign(state, path, device)


def load_entry(entry: ModelEntry, device: str = "cpu") -> nn.Module:
    """A shipped or stored model, loaded after its sha256 check (stored foreign models through spandrel)."""
    path = verify(entry)
    if entry.family == "spandrel":
        from ribsr_cli.engine.foreign import load_foreign

        net = load_foreign(read_state_dict(path)[0], path, device)
    else:
        net = load_model(path, device=device)
    return _label(net, entry.name, entry.source, entry.sha256)


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
            have = sorted({e.scale for e in all_models() if e.source == "shipped" and e.variant == model.lower()})
            raise CheckpointError(model, f"no shipped {model.lower()} model for x{scale} "
                                         f"({model.lower()} models ship for: {', '.join(f'x{s}' for s in have) or 'none'})")
        return entry.name, load_entry(entry, device)
    if model is None:
        entry = default_model(scale)
        if entry is None:
            available = sorted({e.scale for e in all_models() if e.source == "shipped"})
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
        net = _label(load_checkpoint(model, arch, device=device), Path(model).stem, "file", sha256_file(model))
        name = Path(model).stem
    if net.scale != scale:
        raise CheckpointError(model, f"model upscales x{net.scale}, but x{scale} was asked")
    return name, net
