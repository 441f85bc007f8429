"""The one model runner: a loaded network, the options it runs with, and the `Upscaler` that runs it.

Every command that runs a model (upscale, eval, export's measurement, the Ray workers, the scripts and the
benchmarks) goes through here, so each run decision is made in one place:
- which weights ran and where they came from: `LoadedModel` (built by `engine.registry`);
- how to run them: `RunOptions`, validated by `RunOptions.resolve()` before any work (a bad `--device`,
  `--precision` or `--attention` is one usage error, never one failure per file);
- scores do not depend on the machine: `RunOptions.for_scoring()` (fp32 and whole images unless asked);
- preparing the network (device, dtype, attention kernel, run context), the tile size, the one
  out-of-memory retry (halve the tile down to `MIN_TILE`, each fallback noted), grey in / grey out, and the
  report of what actually ran: `Upscaler`.
The device, precision and free-memory policy itself is `engine.runtime`'s; this module only applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ribsr_cli.engine.attention import attention_report, configure_attention
from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.engine.damage import Damage, estimate_image_damage
from ribsr_cli.engine.runtime import (free_memory_bytes, pick_device, pick_dtype, pick_memory_format, precision_name,
                                      run_context)
from ribsr_cli.engine.tiling import OutOfMemory, upscale_image
from ribsr_cli.errors import UsageError
from ribsr_cli.pixels import grey_like, to_rgb

#: the smallest tile the out-of-memory retry goes down to (LR px), and what `--tile N` accepts
MIN_TILE = 32
#: the largest tile `tile="auto"` picks, and the share of free memory (at most 8 GiB) it plans for
MAX_AUTO_TILE = 1024
#: on a CPU the largest tile is the one whose widest feature map (dim x exp_ratio channels, in the dtype that
#: runs) stays under glibc's mmap ceiling (engine/allocator.py), so each layer reuses freed heap instead of
#: mapping, zero-filling and unmapping its buffers: ribsr-s (64 channels) gets 512 px in bf16, 352 in fp32.
#: Measured on one thread (issue 14): a 1500x1000 photo at x4 in bf16 took 36.9 s wall, 14.1 s system time
#: and 5.3 M page faults at 976 px against 25.4 s, 1.6 s and 0.25 M at 512; at x2 in fp32, 56.3 s, 19.7 s and
#: 8.0 M at 512 against 30.6 s, 0.75 s and 0.18 M at 352. Never below MIN_AUTO_TILE_CPU, where the overlap
#: would cost more than the faults.
MIN_AUTO_TILE_CPU = 256
AUTO_TILE_MEMORY_SHARE = 4
AUTO_TILE_MEMORY_CAP = 8 * 2**30
#: what `Upscaler.choose_tile` assumes of a network that has no SST architecture (a foreign model):
#: (feature channels, MLP expansion), about an ESRGAN-class network's activations per pixel
FALLBACK_WIDTH = (64, 2.0)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network with the facts reports need about its weights, kept beside it rather than stuck onto it.

    `name` is what reports and `--name {model}` show (a shipped or stored model's name, a file's stem, or
    `<clean>+real@S` for a --denoise mix); `source` is shipped | stored | file (None for a network built in
    code); `sha256` the weights' hash (both hashes, `+`-joined, for a mix, whose `components` name them).
    """

    network: nn.Module
    name: str
    scale: int
    window_sizes: tuple[int, ...] = ()
    source: str | None = None
    sha256: str | None = None
    components: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, network: nn.Module, name: str = "network", source: str | None = None, sha256: str | None = None,
           components: tuple[dict[str, Any], ...] = ()) -> "LoadedModel":
        """Wrap a network (SST or foreign): its scale and window grid are read from it, once, here."""
        return cls(network, name, int(network.scale), tuple(getattr(network, "window_sizes", None) or ()),
                   source, sha256, tuple(components))

    @property
    def config(self) -> SSTConfig | None:
        """The SST network's typed architecture; None for a foreign model."""
        return getattr(self.network, "config", None)

    @property
    def notes(self) -> list[str]:
        """A foreign model's precision notes (fp32 where spandrel says half precision is unsupported)."""
        return list(getattr(self.network, "notes", []))

    def provenance(self) -> dict[str, Any]:
        """sha256 and source of the weights, and the mix's components when there are some (for reports)."""
        return {"sha256": self.sha256, "source": self.source,
                **({"interpolated_from": [dict(c) for c in self.components]} if self.components else {})}


@dataclass(frozen=True)
class RunOptions:
    """How a model runs: the values of `--device --precision --attention --tile --tile-overlap --batch-tiles
    --tta` (and the RIB strategy, for benchmarks). `tile`: "auto" (from free memory), 0 (whole image) or
    LR pixels."""

    device: str = "auto"
    precision: str = "auto"
    attention: str = "auto"
    strategy: str = "auto"
    tile: int | str = "auto"
    overlap: int = 32
    batch_tiles: int = 1
    tta: bool = False

    def for_scoring(self) -> "RunOptions":
        """The options a score is measured with: scores must not depend on the machine, so `auto` precision
        is fp32 on every device (TF32 off on CUDA) and `auto` tile is the whole image (tiled only when memory
        says no); bf16/fp16 and a tile size only when asked."""
        return replace(self, precision="fp32" if self.precision == "auto" else self.precision,
                       tile=0 if self.tile == "auto" else self.tile)

    def resolve(self) -> tuple[torch.device, torch.dtype]:
        """(device, dtype) these options run with; a one-line UsageError (a ValueError) naming what cannot
        run here. Needs no model, so a typo is reported even when no file needs one (a finished batch re-run,
        a dry run)."""
        if isinstance(self.tile, int) and 0 < self.tile < MIN_TILE:
            raise UsageError(f"--tile {self.tile}", f"a tile is 0 (whole image), auto, or at least {MIN_TILE} LR pixels")
        try:
            device = pick_device(self.device)
            dtype = pick_dtype(self.precision, device)
            check_attention(self.attention, device, dtype)
        except UsageError:
            raise
        except (ValueError, RuntimeError) as exc:  # RuntimeError: torch rejects a malformed --device string
            raise UsageError(str(exc).splitlines()[0]) from None
        return device, dtype


def check_attention(attention: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise ValueError for an unknown kernel, or a UsageError when `--attention flash` cannot run here:
    before any file, not once per file."""
    from ribsr_cli.engine.kernels import check_kernel, flash_refusal

    check_kernel(attention)
    reason = flash_refusal(device.type, dtype) if attention == "flash" else None
    if reason:
        raise UsageError("--attention flash", reason)


@dataclass
class RunReport:
    """What ran, as it ran: for the per-file lines, the summary and the JSON reports (the tile side each
    file ran at is `Upscaler.run`'s second result, kept per job)."""

    precision: str  # what the network computed in (a foreign model may have fallen back to fp32)
    kernels: list[str] = field(default_factory=list)  # attention kernels that ran, first-seen order
    fallbacks: list[str] = field(default_factory=list)  # out-of-memory retries, one line each
    notes: list[str] = field(default_factory=list)  # a foreign model's precision notes


class Upscaler:
    """A network prepared once for its options, and run on images: `run` for upscale's files (any sample
    type, colour only), `upscaler(lr, scale)` for eval (uint8 in, uint8 out, grey kept grey)."""

    def __init__(self, loaded: LoadedModel, options: RunOptions = RunOptions()) -> None:
        self.loaded = loaded
        self.options = options
        self.device, dtype = options.resolve()
        self.dtype = self._prepare(dtype)
        self.context = run_context(self.device, self.dtype)
        self.report = RunReport(precision=precision_name(self.dtype), notes=loaded.notes)
        #: what a damage-conditioned network was told for the last image (`engine.damage.Damage`), else None
        self.last_damage: Damage | None = None

    @property
    def network(self) -> nn.Module:
        return self.loaded.network

    @property
    def name(self) -> str:
        return self.loaded.name

    def provenance(self) -> dict[str, Any]:
        return self.loaded.provenance()

    def _prepare(self, dtype: torch.dtype) -> torch.dtype:
        """Move the network, set its attention kernel and dtype; returns the dtype it will compute in."""
        net, device = self.network, self.device
        choose_dtype = getattr(net, "choose_dtype", None)
        if choose_dtype is not None:  # a foreign (spandrel) model: fp32 where it marks half precision unsupported
            if self.options.precision == "auto" and device.type == "cpu":
                dtype = torch.float32  # CPU bf16's accuracy is measured for ribsr's own networks only (issue 14)
            dtype = choose_dtype(dtype)
        net.to(device).eval()
        if hasattr(net, "use_memory_format"):  # ribsr's own networks (a foreign model keeps its layout)
            net.use_memory_format(pick_memory_format(device))
        if device.type == "cpu":  # big feature maps: reuse freed heap instead of mmap/munmap per layer
            from ribsr_cli.engine.allocator import tune_for_large_tensors

            tune_for_large_tensors()
        configure_attention(net, kernel=self.options.attention, strategy=self.options.strategy,
                            compute_dtype=None if dtype == torch.float32 else dtype)
        return dtype

    def choose_tile(self, h: int, w: int) -> int:
        """The tile for an h x w image: the asked size, or for "auto" the largest window-aligned tile whose
        activations fit a quarter of free memory, at most MAX_AUTO_TILE (on a CPU, `_cpu_tile_cap`); 0, the
        whole image, when its area fits those limits."""
        if self.options.tile != "auto":
            return int(self.options.tile)
        config = self.loaded.config
        dim, exp_ratio = (config.dim, config.exp_ratio) if config is not None else FALLBACK_WIDTH
        bytes_per_px = 4 * dim * (16 + 4 * exp_ratio) * (1 if self.device.type == "cuda" else 2)
        budget = min(free_memory_bytes(self.device) // AUTO_TILE_MEMORY_SHARE, AUTO_TILE_MEMORY_CAP)
        side = int((budget / bytes_per_px) ** 0.5)
        align = max(self.loaded.window_sizes or (16,))
        cap = self._cpu_tile_cap(dim * exp_ratio, align) if self.device.type == "cpu" else MAX_AUTO_TILE
        if h * w <= min(side, cap) ** 2:
            return 0
        return int(max(align * 2, min(cap, side // align * align)))

    def _cpu_tile_cap(self, widest_channels: float, align: int) -> int:
        """The largest window-aligned CPU tile whose widest feature map fits under the mmap ceiling."""
        from ribsr_cli.engine.allocator import MMAP_THRESHOLD

        side = int((MMAP_THRESHOLD / (widest_channels * self.dtype.itemsize)) ** 0.5)
        return max(MIN_AUTO_TILE_CPU, side // align * align)

    def run(self, image: np.ndarray, out_dtype: Any = None,
            on_tile: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
        """(upscaled (sH, sW, 3) image, tile side that ran) for an (H, W, 3) image.

        Out of memory: the tile is halved (from the whole image: half its longer side) and the image run
        again, down to MIN_TILE; each retry is one line in `report.fallbacks`.
        """
        h, w = image.shape[:2]
        tile = self.choose_tile(h, w)
        o = self.options
        self.last_damage = self._condition_on(image)
        while True:
            try:
                out = upscale_image(self.network, image, self.loaded.scale, tile=tile, overlap=o.overlap,
                                    batch_tiles=o.batch_tiles, device=self.device, tta=o.tta,
                                    autocast=self.context, out_dtype=out_dtype, on_tile=on_tile)
                break
            except OutOfMemory:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                whole = not tile or tile >= max(h, w)
                smaller = (max(h, w) if whole else tile) // 2
                if smaller < MIN_TILE:
                    raise
                failed = "whole" if whole else f"at {tile} px"
                self.report.fallbacks.append(f"{w}x{h} image tiled at {smaller} px (out of memory {failed})")
                tile = smaller
        self.report.kernels += [k for k in self.last_kernels() if k not in self.report.kernels]
        return out, tile

    def _condition_on(self, image: np.ndarray) -> Damage | None:
        """A damage-conditioned network (`engine.damage`) is told one estimate per image, read from the whole
        image before tiling, so every tile (and every TTA flip) gets the same; returns what was read, None
        for any other network."""
        config = self.loaded.config
        if config is None or not config.damage_channels:
            return None
        vector = estimate_image_damage(self.network.estimator, image)
        self.network.condition(vector)
        return Damage.from_vector(vector)

    def last_kernels(self) -> list[str]:
        """The attention kernels of the last forward (a foreign model: its architecture and precision)."""
        return attention_report(self.network)["kernels"]

    def __call__(self, lr: np.ndarray, scale: int) -> np.ndarray:
        """eval's method interface: uint8 (H, W[, C]) in, uint8 out at `scale`, grey in gives grey out."""
        if scale != self.loaded.scale:
            raise ValueError(f"{self.name} upscales x{self.loaded.scale}, but x{scale} was asked")
        sr, _ = self.run(to_rgb(lr))
        return grey_like(sr, lr)


def load_upscaler(model: str | None, scale: int, options: RunOptions = RunOptions(), *, arch: str | None = None,
                  denoise: float | None = None) -> Upscaler:
    """An Upscaler for a `-m` value (`engine.registry.resolve`'s rules), loaded on the CPU and then moved."""
    from ribsr_cli.engine.registry import resolve

    return Upscaler(resolve(model, scale, arch, denoise=denoise), options)
