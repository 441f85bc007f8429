"""What `ribsr bench` measures: the option values, their parsers, and which architecture a name means.

The lowest module of the package (no other bench module is imported), so `commands/bench.py` can
validate flags before anything is measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.engine.presets import FAMILIES, get_config

#: Every attention row processes one MAP_SIDE x MAP_SIDE feature map, so work is comparable across windows.
MAP_SIDE = 192
DEFAULT_WINDOWS = [8, 16, 32, 48, 64, 96]
QUICK_WINDOWS = [8, 16, 32]

#: where a run reports what it is doing (one line per step); bench itself never prints
Progress = Callable[[str], None]


def parse_windows(text: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32]; ValueError with the offending item otherwise."""
    windows: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"empty item in {text!r}; use e.g. 8,16,32")
        try:
            ws = int(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a whole number; use e.g. 8,16,32") from None
        if not 2 <= ws <= MAP_SIDE:
            raise ValueError(f"window {ws} is outside 2..{MAP_SIDE}")
        if ws not in windows:
            windows.append(ws)
    return windows


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720): the network's *output* size."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if w < 8 or h < 8:
        raise ValueError(f"size {w}x{h} is too small (at least 8x8)")
    return w, h


#: The scale bench measures a bare family name at ("SST-light" = "SST-light-x4"), passed to the one preset
#: resolver: bench's whole-network rows reproduce the usual lightweight-SR speed setting, a x4 network
#: rendering a 1280x720 output from a 320x180 input, and the results published in README were measured so.
BENCH_FAMILY_SCALE = 4


def resolve_preset(name: str) -> tuple[str, SSTConfig]:
    """(display name, architecture) for `--preset`: a full preset name ('SST-light-x4'), a family name (at
    BENCH_FAMILY_SCALE), or a shipped or stored model (`-m NAME`; weights do not change speed, so only its
    architecture is used)."""
    from ribsr_cli.catalog import find_model

    family = next((f for f in FAMILIES if f.lower() == name.lower()), None)
    if family is not None:
        return f"{family}-x{BENCH_FAMILY_SCALE}", get_config(family, BENCH_FAMILY_SCALE)
    with contextlib.suppress(KeyError):
        return name, get_config(name)
    entry = find_model(name)
    if entry is not None and entry.arch:
        return entry.name, SSTConfig.from_network_g(entry.arch)
    return name, get_config(name)  # raises the registry's own message for unknown names


@dataclass
class Options:
    """What to measure. None fields take a default that depends on `quick`."""

    quick: bool = False
    windows: list[int] | None = None
    preset: str = "SST-light"
    size: tuple[int, int] | None = None  # output W, H of the network section
    device: str = "auto"  # as `engine.runtime.pick_device` reads it
    dtype: str = "auto"  # a precision name, as `engine.runtime.pick_dtype` reads it
    repeats: int | None = None  # fixed count; None sizes each row to ~target_s
    train: bool = False
    all_kernels: bool = False
    batch: int | None = None
    patch: int | None = None  # LR patch side of the training step
    attention: bool = True
    network: bool = True
    flex: bool | None = None  # compiling flex_attention costs seconds per window: off in --quick
    corrupt_rib: bool = False  # perturb the RIB path (tests prove the guard aborts)
    target_s: float | None = None
    threads: int | None = None  # CPU threads for the run; None: environment.auto_threads()
    seed: int = 0

    def __post_init__(self) -> None:
        q = self.quick
        self.windows = list(self.windows or (QUICK_WINDOWS if q else DEFAULT_WINDOWS))
        self.size = self.size or ((256, 144) if q else (1280, 720))
        self.batch = self.batch or (2 if q else 4)
        self.patch = self.patch or (32 if q else 64)
        self.flex = (not q) if self.flex is None else self.flex
        self.target_s = self.target_s or (0.2 if q else 1.5)

    def repeat_bounds(self, device: torch.device) -> tuple[int, int]:
        """(fewest, most) timed repeats per row: GPUs are fast and noisy, so they get more."""
        if device.type != "cpu":
            return (5, 50) if self.quick else (10, 200)
        return (3, 8) if self.quick else (3, 30)
