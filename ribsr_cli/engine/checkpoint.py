"""Loading and saving checkpoints: the authors' `.pth` files as they are, and ribsr's safetensors.

Loading never unpickles arbitrary objects (`weights_only=True`) and reports every
problem as one `CheckpointError` line. The architecture comes, in order, from
the file's own metadata, from the caller (`arch`), or from the key layout and
tensor shapes (in the spirit of spandrel); window sizes are not stored in a RIB
checkpoint, so when presets disagree on them the error names the candidates.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ribsr_cli.engine.grow import count_blocks, damage_layout
from ribsr_cli.engine.network import SST
from ribsr_cli.errors import CheckpointError  # re-exported: callers import it from here
from ribsr_cli.fileutil import atomic_path
from ribsr_cli.engine.presets import PRESETS, get_preset, normalize_arch

ARCH_KEY = "ribsr_arch"
PROVENANCE_KEY = "ribsr_provenance"
WRAPPERS = ("params_ema", "params", "state_dict", "model")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) from `.safetensors` or `.pth/.pt`, unwrapped and without `module.`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                raw: Any = {k: f.get_tensor(k) for k in f.keys()}
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled objects, wrong format
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(path, f"not a readable tensor checkpoint (.pth/.pt loaded with weights_only=True, or .safetensors): {detail}") from None
    if isinstance(raw, dict):
        for key in WRAPPERS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(path, "not a state dict of tensors (expected keys like proj.weight, or params/params_ema)")
    state = {re.sub(r"^module\.", "", k): v for k, v in raw.items()}
    return state, metadata


def _arch_from_argument(arch: str | dict | Path) -> dict[str, Any]:
    if isinstance(arch, dict):
        return arch.get("network_g", arch)
    text = str(arch)
    if text.lower() in (name.lower() for name in PRESETS):
        return get_preset(text)
    file = Path(text)
    if file.is_file():
        import yaml

        data = yaml.safe_load(file.read_text())  # YAML is a superset of JSON
        if isinstance(data, dict):
            return data.get("network_g", data)
        raise ValueError(f"{file}: no architecture dict inside")
    raise ValueError(f"unknown architecture {text!r}: not a preset name (see `ribsr models`) nor a JSON/YAML file")


def _layer_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in state):
        n += 1
    return n


def detect_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the architecture from key names and shapes; raises ValueError when it cannot be told."""
    if "proj.weight" not in state:
        raise ValueError("no proj.weight: not an SST checkpoint")
    dim = state["proj.weight"].shape[0]
    n_blocks = count_blocks(state)
    if n_blocks == 0:
        raise ValueError("no body.0.0.norm_attn.weight: not an SST checkpoint")
    n_layers = 0
    while f"body.0.{n_layers}.norm_attn.weight" in state:
        n_layers += 1
    arch: dict[str, Any] = {"dim": dim, "n_blocks": n_blocks}
    damage_channels, damage_modulation = damage_layout(state)
    if damage_channels:  # ribsr's damage-conditioned networks (engine.damage)
        arch.update(damage_channels=damage_channels, damage_modulation=damage_modulation)
    heads, ranks, rpb_windows = [], [], []
    first = "body.0.0.attn."
    if first + "to_hidden" in state:
        arch["attn_type"] = "RIB"
        hidden, feats = state[first + "to_hidden"].shape[1], state[first + "to_hidden"].shape[0]
        arch["rib_hidden_dim"], arch["rib_n_freqs"] = hidden, (feats - 2) // 4
        for j in range(n_layers):
            h, _, r = state[f"body.0.{j}.attn.to_q"].shape
            heads.append(h)
            ranks.append(r)
    elif first + "relative_position_bias" in state:
        arch["attn_type"] = "RPB"
        for j in range(n_layers):
            h, size = state[f"body.0.{j}.attn.relative_position_bias"].shape
            heads.append(h)
            rpb_windows.append((math.isqrt(size) + 1) // 2)
    else:
        raise ValueError("no positional parameters: a NoPE checkpoint needs an explicit architecture (--arch)")
    arch["num_heads"] = heads
    arch["ranks"] = ranks or [16] * n_layers
    arch["exp_ratio"] = state["body.0.0.ffn.proj.weight"].shape[0] / dim
    arch["gate_type"] = "DWC" if first + "gate.0.weight" in state else "none"
    if "upsampler.feature_conv.weight" in state:
        inter = state["upsampler.feature_conv.weight"].shape[0]
        arch.update(upsampler_type="pixelshuffle", intermediate_dim=inter,
                    upscaling_factor=math.isqrt(state["upsampler.up_conv.weight"].shape[0] // inter))
    else:
        arch.update(upsampler_type="pixelshuffle_direct",
                    upscaling_factor=math.isqrt(state["upsampler.up_conv.weight"].shape[0] // 3))
    if rpb_windows:
        arch["window_sizes"] = rpb_windows
        return normalize_arch(arch)
    candidates: dict[tuple[int, ...], list[str]] = {}
    for name, preset in PRESETS.items():
        if (preset["dim"], preset["n_blocks"], preset["num_heads"], preset["ranks"],
                preset["upscaling_factor"], preset["upsampler_type"]) == (
                dim, n_blocks, heads, ranks, arch["upscaling_factor"], arch["upsampler_type"]):
            candidates.setdefault(tuple(preset["window_sizes"]), []).append(name)
    if len(candidates) == 1:
        arch["window_sizes"] = list(next(iter(candidates)))
        return normalize_arch(arch)
    if not candidates:
        raise ValueError(
            f"window sizes are not stored in a RIB checkpoint and no preset matches "
            f"(dim {dim}, {n_blocks} blocks, {n_layers} layers, heads {heads}, ranks {ranks}); pass --arch"
        )
    options = "; ".join(f"{list(ws)} ({', '.join(names)})" for ws, names in candidates.items())
    raise ValueError(f"ambiguous window sizes, candidates: {options}; pass --arch with one of these presets")


def _explain_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        return "; ".join(parts)
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            return f"shape of {key} is {tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the architecture"
    return None


SST_LAYOUT_KEYS = ("proj.weight", "body.0.0.norm_attn.weight")  # what every SST/RIB state dict has


def is_sst(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """ribsr's own format, or the authors' SST layout: these go to ribsr's engine, never to spandrel."""
    return ARCH_KEY in metadata or all(k in state for k in SST_LAYOUT_KEYS)


def preset_name_of(arch: dict[str, Any]) -> str | None:
    """The preset whose normalised architecture equals `arch`, if any (a model's display name)."""
    return next((name for name, preset in PRESETS.items() if normalize_arch(preset) == arch), None)


def load_model(
    path: str | Path,
    arch: str | dict | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> SST:
    """A ready-to-run SST (eval mode) from a checkpoint file; every failure is a one-line CheckpointError."""
    state, metadata = read_state_dict(path)
    return model_from_state(state, metadata, path, arch, device=device)


def model_from_state(
    state: dict[str, torch.Tensor],
    metadata: dict[str, str],
    path: str | Path,
    arch: str | dict | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> SST:
    """`load_model` for a state dict already read by `read_state_dict` (`path` names it in errors)."""
    try:
        if ARCH_KEY in metadata:
            arch_dict = json.loads(metadata[ARCH_KEY])
        elif arch is not None:
            arch_dict = _arch_from_argument(arch)
        else:
            arch_dict = detect_arch(state)
        model = SST(normalize_arch(arch_dict))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(path, str(exc).strip("'\"")) from None
    problem = _explain_mismatch(model, state)
    if problem:
        raise CheckpointError(path, f"does not fit the architecture: {problem}")
    model.load_state_dict(state, strict=True)
    model.provenance = json.loads(metadata.get(PROVENANCE_KEY, "{}"))  # type: ignore[attr-defined]
    return model.to(device).eval()


def save_model(model: SST, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
    """ribsr's format: safetensors with the architecture and provenance in the metadata, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {ARCH_KEY: json.dumps(model.arch), PROVENANCE_KEY: json.dumps(provenance or {}), "format": "pt"}
    with atomic_path(path) as tmp:  # all or nothing: a failed or interrupted save leaves the old file
        save_file(state, str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # safetensors creates the file private; weights are meant to be shared
