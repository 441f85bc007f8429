"""Named architectures (the authors' released configs and ribsr's own) and arch validation.

Presets are kept in the `network_g` form (the authors' YAML keys) because that is what checkpoint metadata
and `--arch` files carry; `engine.config.SSTConfig` validates them and is what a network is built from.
"""

from __future__ import annotations

from typing import Any

from ribsr_cli.engine.config import NETWORK_G_DEFAULTS, SSTConfig

#: The scale a bare family name means ("SST-light" = "SST-light-x2") wherever a name is resolved: ribsr's
#: default upscale factor. A command that wants another (bench compares at the paper's x4) passes it.
DEFAULT_FAMILY_SCALE = 2

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
    # ribsr-s with six blocks (~0.24 M params), for deeper fine-tunes of ribsr-s (real-photo models): it grows
    # from ribsr-s exactly (engine.grow: the three extra blocks start as identities), so `--denoise` can still
    # mix such a model with its clean ribsr-s partner; a training step costs ~1.7x ribsr-s's. Measured (0.5.0,
    # x4 real, 2,568 steps): its validation tracked the 3-block run's within 0.005 dB, so ribsr-s ships.
    "ribsr-s6": dict(dim=32, num_heads=2, ranks=[8, 8], n_blocks=6, exp_ratio=2,
                     upsampler_type="pixelshuffle_direct", window_sizes=[8, 16]),
    # ribsr-s told the camera damage (engine.damage): blur/noise/JPEG maps at its first convolution and the
    # ~76 k-parameter estimator that reads them from the LR; grows exactly from ribsr-s (engine.grow: the
    # conditioning weights start at zero), so `--denoise` mixes it with its clean ribsr-s partner.
    "ribsr-sd": dict(dim=32, num_heads=2, ranks=[8, 8], n_blocks=3, exp_ratio=2,
                     upsampler_type="pixelshuffle_direct", window_sizes=[8, 16], damage_channels=3),
    # ribsr-sd whose every layer is also modulated by the damage (network.Layer: adaLN-Zero style), ~+1.5 k
    # parameters; grows exactly from ribsr-s and from ribsr-sd
    "ribsr-sdm": dict(dim=32, num_heads=2, ranks=[8, 8], n_blocks=3, exp_ratio=2,
                      upsampler_type="pixelshuffle_direct", window_sizes=[8, 16], damage_channels=3,
                      damage_modulation=True),
}


def _preset_table() -> dict[str, dict[str, Any]]:
    table = {}
    for family, fields in _FAMILIES.items():
        for scale in (2, 3, 4):
            arch = dict(NETWORK_G_DEFAULTS, **fields, upscaling_factor=scale)
            table[f"{family}-x{scale}"] = normalize_arch(arch)
    return table


def normalize_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """Complete and validate a `network_g`-style dict (through `SSTConfig`, the one validator)."""
    return SSTConfig.from_network_g(arch).to_network_g()


PRESETS: dict[str, dict[str, Any]] = _preset_table()


def get_preset(name: str, scale: int | None = None) -> dict[str, Any]:
    """The one preset resolver, case-insensitive: a full name ('SST-light-x4'), or a family ('SST-light')
    at `scale`, DEFAULT_FAMILY_SCALE when none is given. Returns the `network_g` dict."""
    for family in _FAMILIES:
        if family.lower() == name.lower():
            name = f"{family}-x{scale or DEFAULT_FAMILY_SCALE}"
    for key, arch in PRESETS.items():
        if key.lower() == name.lower():
            if scale is not None and arch["upscaling_factor"] != scale:
                raise KeyError(f"preset {key} is x{arch['upscaling_factor']}, not x{scale}")
            return dict(arch)
    raise KeyError(f"unknown preset {name!r}; run `ribsr models` for the list")


def get_config(name: str, scale: int | None = None) -> SSTConfig:
    """`get_preset` as a typed config."""
    return SSTConfig.from_network_g(get_preset(name, scale))


FAMILIES = tuple(_FAMILIES)
