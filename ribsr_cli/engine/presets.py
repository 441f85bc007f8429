"""Named architectures (the authors' released configs and ribsr's own) and arch validation.

`normalize_arch` turns a reference-style `network_g` dict into a complete,
checked one: defaults for missing keys, scalars broadcast per layer, aliases
resolved, and one clear error for anything unknown.
"""

from __future__ import annotations

from typing import Any

ATTN_ALIASES = {"RIB": "RIB", "RPB": "RPB", "SDPA": "RPB", "NAIVE": "RPB", "FLEX": "RPB", "NOPE": "NoPE", "NONE": "NoPE"}
UPSAMPLERS = ("pixelshuffle_direct", "pixelshuffle")
GATES = {"DWC": "DWC", "NONE": None}

#: Defaults of the reference constructor (SST base layout) for keys a config omits.
DEFAULTS: dict[str, Any] = {
    "dim": 180,
    "window_sizes": [16, 32, 64, 16, 32, 64],
    "num_heads": 6,
    "ranks": [18, 18, 18, 34, 34, 34],
    "n_blocks": 6,
    "exp_ratio": 1.25,
    "attn_type": "RIB",
    "rib_hidden_dim": 32,
    "rib_n_freqs": 10,
    "upscaling_factor": 2,
    "upsampler_type": "pixelshuffle",
    "gate_type": "DWC",
    "intermediate_dim": 64,
}
KNOWN_KEYS = set(DEFAULTS) | {"type"}

_WINDOWS = [16, 32, 64, 16, 32, 64]
_WINDOWS_PLUS = [16, 32, 48, 32, 48, 96]
_WINDOWS_LIGHT = [8, 16, 32, 16, 32, 64]

_FAMILIES: dict[str, dict[str, Any]] = {
    "SST-light": dict(dim=48, num_heads=3, ranks=[16, 16, 16, 24, 24, 24], n_blocks=5, exp_ratio=1.5,
                      upsampler_type="pixelshuffle_direct", window_sizes=_WINDOWS_LIGHT),
    "SST-light+": dict(dim=48, num_heads=3, ranks=[16, 16, 16, 24, 24, 24], n_blocks=5, exp_ratio=1.5,
                       upsampler_type="pixelshuffle_direct", window_sizes=_WINDOWS_PLUS),
    "SST": dict(dim=180, num_heads=6, ranks=[18, 18, 18, 34, 34, 34], n_blocks=6, exp_ratio=1.25,
                upsampler_type="pixelshuffle", window_sizes=_WINDOWS),
    "SST+": dict(dim=180, num_heads=6, ranks=[18, 18, 18, 34, 34, 34], n_blocks=6, exp_ratio=1.25,
                 upsampler_type="pixelshuffle", window_sizes=_WINDOWS_PLUS),
    "SST-Large": dict(dim=192, num_heads=6, ranks=[16, 16, 16, 32, 32, 32], n_blocks=8, exp_ratio=2,
                      upsampler_type="pixelshuffle", intermediate_dim=96, window_sizes=_WINDOWS),
    "SST-Large+": dict(dim=192, num_heads=6, ranks=[16, 16, 16, 32, 32, 32], n_blocks=8, exp_ratio=2,
                       upsampler_type="pixelshuffle", intermediate_dim=96, window_sizes=_WINDOWS_PLUS),
    "SST-XL+": dict(dim=224, num_heads=7, ranks=[16, 16, 16, 32, 32, 32], n_blocks=10, exp_ratio=2,
                    upsampler_type="pixelshuffle", intermediate_dim=96, window_sizes=_WINDOWS_PLUS),
    # ribsr's own CPU-trainable model (~0.12 M params): two small windows per block keep a
    # training step near 0.6 s on one core (batch 8 of 48x48); RIB, direct pixel-shuffle.
    "ribsr-s": dict(dim=32, num_heads=2, ranks=[8, 8], n_blocks=3, exp_ratio=2,
                    upsampler_type="pixelshuffle_direct", window_sizes=[8, 16]),
}


def _preset_table() -> dict[str, dict[str, Any]]:
    table = {}
    for family, fields in _FAMILIES.items():
        for scale in (2, 3, 4):
            arch = dict(DEFAULTS, **fields, upscaling_factor=scale)
            table[f"{family}-x{scale}"] = normalize_arch(arch)
    return table


def _per_layer(value: Any, n: int, key: str) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"'{key}' has {len(values)} entries but window_sizes has {n}")
    return [int(v) for v in values]


def normalize_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Complete and validate a `network_g`-style architecture dict."""
    unknown = set(arch) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown architecture key(s): {', '.join(sorted(unknown))}")
    if arch.get("type", "SST") != "SST":
        raise ValueError(f"unsupported network type {arch['type']!r} (only SST)")
    out = {k: arch.get(k, DEFAULTS[k]) for k in DEFAULTS}
    out["window_sizes"] = [int(w) for w in out["window_sizes"]]
    n = len(out["window_sizes"])
    if n == 0 or any(w < 1 for w in out["window_sizes"]):
        raise ValueError(f"window_sizes must be positive integers, got {out['window_sizes']}")
    out["num_heads"] = _per_layer(out["num_heads"], n, "num_heads")
    out["ranks"] = _per_layer(out["ranks"], n, "ranks")
    attn = str(out["attn_type"]).upper()
    if attn not in ATTN_ALIASES:
        raise ValueError(f"unknown attn_type {out['attn_type']!r}; choose RIB, RPB (aliases SDPA, Naive, Flex) or NoPE")
    out["attn_type"] = ATTN_ALIASES[attn]
    if out["upsampler_type"] not in UPSAMPLERS:
        raise ValueError(f"unknown upsampler_type {out['upsampler_type']!r}; choose one of {', '.join(UPSAMPLERS)}")
    gate_key = str(out["gate_type"]).upper()
    if gate_key not in GATES:
        raise ValueError(f"unknown gate_type {out['gate_type']!r}; choose DWC or none")
    out["gate_type"] = GATES[gate_key]
    scale = int(out["upscaling_factor"])
    if scale < 1:
        raise ValueError(f"upscaling_factor must be >= 1, got {scale}")
    out["upscaling_factor"] = scale
    for key in ("dim", "n_blocks", "rib_hidden_dim", "rib_n_freqs", "intermediate_dim"):
        out[key] = int(out[key])
    for j, heads in enumerate(out["num_heads"]):
        if out["dim"] % heads:
            raise ValueError(f"dim {out['dim']} is not divisible by num_heads {heads} (layer {j})")
    out["exp_ratio"] = float(out["exp_ratio"])
    return out


PRESETS: dict[str, dict[str, Any]] = _preset_table()


def get_preset(name: str, scale: int | None = None) -> dict[str, Any]:
    """A preset by name, case-insensitively: 'SST-light-x4', or a family ('SST-light') with `scale` (default 2)."""
    for family in _FAMILIES:
        if family.lower() == name.lower():
            name = f"{family}-x{scale or 2}"
    for key, arch in PRESETS.items():
        if key.lower() == name.lower():
            if scale is not None and arch["upscaling_factor"] != scale:
                raise KeyError(f"preset {key} is x{arch['upscaling_factor']}, not x{scale}")
            return dict(arch)
    raise KeyError(f"unknown preset {name!r}; run `ribsr models` for the list")


FAMILIES = tuple(_FAMILIES)
