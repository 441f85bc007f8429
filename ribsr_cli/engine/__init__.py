"""RIB-SR inference engine: the SST network, its attention kernels and checkpoints.

Importable without the CLI (no typer/rich here).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ribsr_cli.engine.attention import attention_report, configure_attention
from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.engine.network import SST
from ribsr_cli.engine.presets import PRESETS, get_preset, normalize_arch


def build_model(arch: SSTConfig | dict[str, Any] | str) -> nn.Module:
    """An SST from a typed config, a reference `network_g` dict (missing keys take reference defaults) or a
    preset name."""
    if isinstance(arch, str):
        arch = get_preset(arch)
    return SST(arch)  # SST reads a dict as `SSTConfig.from_network_g` does


def load_model(*args, **kwargs):  # noqa: D103 - re-exported lazily to keep import light
    from ribsr_cli.engine.checkpoint import load_model as _load

    return _load(*args, **kwargs)


__all__ = ["SSTConfig", "build_model", "load_model", "configure_attention", "attention_report", "PRESETS", "get_preset", "normalize_arch"]
