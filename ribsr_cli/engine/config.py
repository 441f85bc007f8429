"""`SSTConfig`: the typed, frozen architecture of an SST network.

Why a dataclass and not the `network_g` dict it replaces: a dict let every caller probe keys its own way
(`arch["num_heads"][0]`, `getattr(model, "arch", {...})`) and a typo failed deep inside a layer. The
config is validated once, when it is made, and is immutable afterwards, so a network and its checkpoint
metadata cannot drift apart.

The authors' YAML and ribsr's checkpoint metadata keep the `network_g` key layout (`upscaling_factor`,
`attn_type`, scalars that broadcast per layer, aliases such as `SDPA`): `from_network_g` reads it (filling
the reference constructor's defaults) and `to_network_g` writes it back, so files written before this
class existed load unchanged and files written now load in the authors' code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Optional

ATTN_ALIASES = {"RIB": "RIB", "RPB": "RPB", "SDPA": "RPB", "NAIVE": "RPB", "FLEX": "RPB", "NOPE": "NoPE", "NONE": "NoPE"}
UPSAMPLERS = ("pixelshuffle_direct", "pixelshuffle")
GATES = {"DWC": "DWC", "NONE": None}

#: Defaults of the reference constructor (the SST base layout) for keys a `network_g` omits.
NETWORK_G_DEFAULTS: dict[str, Any] = {
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
#: ribsr's extension keys: written only when they differ from these values, so a reference network's
#: `network_g` stays exactly the authors' layout
EXTENSION_DEFAULTS: dict[str, Any] = {"damage_channels": 0, "damage_modulation": False}
KNOWN_KEYS = set(NETWORK_G_DEFAULTS) | set(EXTENSION_DEFAULTS) | {"type"}


def _per_layer(value: Any, n: int, key: str) -> tuple[int, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"'{key}' has {len(values)} entries but window_sizes has {n}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class SSTConfig:
    """Every hyper-parameter an SST network is built from; per-layer fields have one entry per window size.

    `scale` is the network's upscaling factor (`upscaling_factor` in `network_g`). `gate_type` is "DWC"
    (the depthwise-conv gate on the attention output) or None. `attn_type` is "RIB", "RPB" or "NoPE".
    """

    dim: int = 180
    window_sizes: tuple[int, ...] = (16, 32, 64, 16, 32, 64)
    num_heads: tuple[int, ...] = (6,) * 6
    ranks: tuple[int, ...] = (18, 18, 18, 34, 34, 34)
    n_blocks: int = 6
    exp_ratio: float = 1.25
    attn_type: str = "RIB"
    rib_hidden_dim: int = 32
    rib_n_freqs: int = 10
    scale: int = 2
    upsampler_type: str = "pixelshuffle"
    gate_type: Optional[str] = "DWC"
    intermediate_dim: int = 64
    #: ribsr's damage-conditioned networks (`engine.damage`): a conv of constant damage maps added to proj(x)
    damage_channels: int = 0
    #: and, with it, a damage-dependent scale and shift of every layer's norms (`network.Layer`)
    damage_modulation: bool = False

    def __post_init__(self) -> None:
        n = len(self.window_sizes)
        if n == 0 or any(w < 1 for w in self.window_sizes):
            raise ValueError(f"window_sizes must be positive integers, got {list(self.window_sizes)}")
        for key in ("num_heads", "ranks"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"'{key}' has {len(getattr(self, key))} entries but window_sizes has {n}")
        if self.attn_type not in ("RIB", "RPB", "NoPE"):
            raise ValueError(f"unknown attn_type {self.attn_type!r}; choose RIB, RPB (aliases SDPA, Naive, Flex) or NoPE")
        if self.upsampler_type not in UPSAMPLERS:
            raise ValueError(f"unknown upsampler_type {self.upsampler_type!r}; choose one of {', '.join(UPSAMPLERS)}")
        if self.gate_type not in (None, "DWC"):
            raise ValueError(f"unknown gate_type {self.gate_type!r}; choose DWC or none")
        if self.scale < 1:
            raise ValueError(f"upscaling_factor must be >= 1, got {self.scale}")
        if self.damage_channels < 0:
            raise ValueError(f"damage_channels must be >= 0, got {self.damage_channels}")
        if self.damage_modulation and not self.damage_channels:
            raise ValueError("damage_modulation needs damage_channels")
        for j, heads in enumerate(self.num_heads):
            if self.dim % heads:
                raise ValueError(f"dim {self.dim} is not divisible by num_heads {heads} (layer {j})")

    @classmethod
    def from_network_g(cls, arch: dict[str, Any]) -> "SSTConfig":
        """Read a reference-style `network_g` dict: defaults for missing keys, scalars broadcast per layer,
        aliases resolved, one clear error for anything unknown."""
        unknown = set(arch) - KNOWN_KEYS
        if unknown:
            raise ValueError(f"unknown architecture key(s): {', '.join(sorted(unknown))}")
        if arch.get("type", "SST") != "SST":
            raise ValueError(f"unsupported network type {arch['type']!r} (only SST)")
        g = {k: arch.get(k, NETWORK_G_DEFAULTS[k]) for k in NETWORK_G_DEFAULTS}
        windows = tuple(int(w) for w in g["window_sizes"])
        if not windows:
            raise ValueError("window_sizes must be positive integers, got []")
        attn = str(g["attn_type"]).upper()
        if attn not in ATTN_ALIASES:
            raise ValueError(f"unknown attn_type {g['attn_type']!r}; choose RIB, RPB (aliases SDPA, Naive, Flex) or NoPE")
        gate = str(g["gate_type"]).upper()
        if gate not in GATES:
            raise ValueError(f"unknown gate_type {g['gate_type']!r}; choose DWC or none")
        return cls(
            dim=int(g["dim"]),
            window_sizes=windows,
            num_heads=_per_layer(g["num_heads"], len(windows), "num_heads"),
            ranks=_per_layer(g["ranks"], len(windows), "ranks"),
            n_blocks=int(g["n_blocks"]),
            exp_ratio=float(g["exp_ratio"]),
            attn_type=ATTN_ALIASES[attn],
            rib_hidden_dim=int(g["rib_hidden_dim"]),
            rib_n_freqs=int(g["rib_n_freqs"]),
            scale=int(g["upscaling_factor"]),
            upsampler_type=str(g["upsampler_type"]),
            gate_type=GATES[gate],
            intermediate_dim=int(g["intermediate_dim"]),
            damage_channels=int(arch.get("damage_channels", EXTENSION_DEFAULTS["damage_channels"])),
            damage_modulation=bool(arch.get("damage_modulation", EXTENSION_DEFAULTS["damage_modulation"])),
        )

    def to_network_g(self) -> dict[str, Any]:
        """The `network_g` dict (lists, `upscaling_factor`), as checkpoint metadata and the authors' YAML spell it."""
        out = asdict(self)
        out["upscaling_factor"] = out.pop("scale")
        for key in ("window_sizes", "num_heads", "ranks"):
            out[key] = list(out[key])
        extensions = {k: out[k] for k, default in EXTENSION_DEFAULTS.items() if out[k] != default}
        return {**{k: out[k] for k in NETWORK_G_DEFAULTS}, **extensions}

    def with_scale(self, scale: int) -> "SSTConfig":
        """The same body with another upsampler factor (a family's x2/x3/x4 members differ only here)."""
        return dataclasses.replace(self, scale=scale)  # __post_init__ validates the copy
