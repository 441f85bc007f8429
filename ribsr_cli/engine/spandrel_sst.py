"""ribsr's SST as a spandrel architecture, so programs built on spandrel load SST/RIB checkpoints through ribsr.

    import spandrel
    from ribsr_cli.engine.spandrel_sst import register_sst

    register_sst()  # adds "SST" to spandrel.MAIN_REGISTRY (once; later calls are no-ops)
    model = spandrel.ModelLoader().load_from_file("sst_x4.pth")  # an ImageModelDescriptor around ribsr's SST

Detection and loading are ribsr's own (`checkpoint.detect_arch`, `network.SST`): the key layout says SST, the
shapes give the architecture. One thing a state dict cannot tell is a RIB model's window sizes; detection
takes them from the matching preset, and for a network that matches none (or several) the caller names the
architecture once: `register_sst(arch="ribsr-s")`, or a `network_g` dict / JSON / YAML file, which then
applies to every SST the registry loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ribsr_cli.engine.checkpoint import SST_LAYOUT_KEYS, _arch_from_argument, detect_arch, preset_name_of
from ribsr_cli.engine.network import SST
from ribsr_cli.engine.presets import normalize_arch
from ribsr_cli.engine.spandrel_import import import_spandrel

ARCH_ID = "SST"
SST_KEYS = SST_LAYOUT_KEYS + ("upsampler.up_conv.weight",)  # spandrel's detection also wants ribsr's upsampler


def is_sst_state(state: dict[str, Any]) -> bool:
    """The SST layout: input projection, window-attention layers, ribsr's upsampler."""
    return all(k in state for k in SST_KEYS)


def _tags(arch: dict[str, Any]) -> list[str]:
    preset = preset_name_of(arch)
    return ([preset] if preset else []) + [f"{arch['dim']}dim", arch["attn_type"]]


def sst_architecture(arch: str | dict | Path | None = None) -> Any:
    """A spandrel `Architecture` for SST; `arch` fixes the architecture instead of detecting it."""
    spandrel = import_spandrel()
    fixed = normalize_arch(_arch_from_argument(arch)) if arch is not None else None

    class SSTArch(spandrel.Architecture[SST]):
        def __init__(self) -> None:
            super().__init__(id=ARCH_ID, name="SST (ribsr)", detect=is_sst_state)

        def load(self, state_dict: dict[str, Any]) -> Any:
            config = fixed or detect_arch(state_dict)  # ValueError names the candidates when windows are ambiguous
            model = SST(config)
            return spandrel.ImageModelDescriptor(
                model, state_dict, architecture=self, purpose="SR", tags=_tags(model.arch),
                supports_half=False,  # ribsr runs half precision as autocast, not as fp16 weights; untested
                supports_bfloat16=False, scale=int(config["upscaling_factor"]), input_channels=3,
                output_channels=3, size_requirements=spandrel.SizeRequirements(),  # SST pads to its windows itself
                tiling=spandrel.ModelTiling.SUPPORTED)

    return SSTArch()


def register_sst(registry: Any = None, arch: str | dict | Path | None = None) -> Any:
    """Add SST to `registry` (default: spandrel's MAIN_REGISTRY); returns the registry. Already present: no-op."""
    spandrel = import_spandrel()
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    registry.add(spandrel.ArchSupport.from_architecture(sst_architecture(arch)), ignore_duplicates=True)
    return registry
