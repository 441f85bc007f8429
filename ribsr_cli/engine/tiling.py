"""Tiled inference with bounded memory: the image stays on the host, only tiles visit the device.

Tiles start on multiples of the network's window grid, so inside a tile the
windows are the very windows of a whole-image pass; they overlap and are
blended with a linear ramp, so no seam shows. Blending happens in a float
accumulator one tile-row high, allocated once per image and reused; finished
rows are rounded, a slab at a time, straight into the preallocated uint8/uint16
output, so no float copy of the whole output (or of a whole tile row) exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ribsr_cli.errors import RibsrError
from ribsr_cli.pixels import from_float, to_float


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def window_alignment(model: nn.Module, tile: int) -> int:
    """Tile starts snap to this many LR pixels: the lcm of the window sizes when it fits in a tile."""
    sizes = getattr(model, "window_sizes", None) or [1]
    align = math.lcm(*sizes)
    if align > tile:
        align = max(sizes) if max(sizes) <= tile else 1
    return align


def axis_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Aligned tile starts along one axis such that [start, start+tile) covers 0..length."""
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    return starts


def plan_tiles(h: int, w: int, tile: int, overlap: int, align: int) -> list[list[Tile]]:
    """Rows of tiles covering an h x w image."""
    rows = []
    for y in axis_starts(h, tile, overlap, align):
        rows.append([Tile(y, min(y + tile, h), x, min(x + tile, w)) for x in axis_starts(w, tile, overlap, align)])
    return rows


def ramp(length: int, lead: int, trail: int) -> np.ndarray:
    """1-D blend weights: linear ramps over the overlaps shared with neighbours, 1 elsewhere."""
    weight = np.ones(length, dtype=np.float32)
    if lead > 0:
        weight[:lead] = np.minimum(weight[:lead], (np.arange(lead, dtype=np.float32) + 0.5) / lead)
    if trail > 0:
        weight[length - trail:] = np.minimum(weight[length - trail:], (np.arange(trail, 0, -1, dtype=np.float32) - 0.5) / trail)
    return weight


DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def _transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=[-1]) if flip else x
    return torch.rot90(x, k, dims=(-2, -1))


def _untransform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=[-1]) if flip else x


def run_model(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """One forward (or the mean of the 8 flip/rotate passes with `tta`)."""
    if not tta:
        return model(x)
    acc = None
    for k, flip in DIHEDRAL:
        y = _untransform(model(_transform(x, k, flip)), k, flip)
        acc = y if acc is None else acc + y
    return acc / len(DIHEDRAL)


class OutOfMemory(RibsrError, RuntimeError):
    pass


#: output rows divided and rounded per step when a tile row is final (bounds that float temporary)
FINALIZE_ROWS = 256


def _forward_batch(model, tiles: list[np.ndarray], device, tta: bool, autocast) -> list[np.ndarray]:
    batch = torch.stack([torch.from_numpy(to_float(t)).permute(2, 0, 1) for t in tiles]).to(device)
    try:
        with torch.inference_mode(), autocast:
            out = run_model(model, batch, tta).float().clamp_(0, 1)
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(str(exc)) from None
    except RuntimeError as exc:
        text = str(exc).lower()
        # CUDA/MPS say "out of memory"; the CPU allocator says "can't allocate memory"
        if any(key in text for key in ("out of memory", "not enough memory", "allocate memory")):
            raise OutOfMemory(str(exc)) from None
        raise
    return [o.permute(1, 2, 0).cpu().numpy() for o in out]


def upscale_image(
    model: nn.Module,
    image: np.ndarray,
    scale: int,
    *,
    tile: int = 0,
    overlap: int = 32,
    batch_tiles: int = 1,
    device: torch.device | str = "cpu",
    tta: bool = False,
    autocast=None,
    out_dtype: np.dtype | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Upscale an (H, W, 3) uint8/uint16/float image; returns (sH, sW, 3) in `out_dtype` (default: input's integer dtype).

    `tile` 0 processes the whole image at once. `on_tile(done, total)` reports progress.
    """
    import contextlib

    h, w, c = image.shape
    out_dtype = np.dtype(out_dtype or (image.dtype if image.dtype in (np.uint8, np.uint16) else np.uint8))
    tile = tile if tile and tile < max(h, w) else max(h, w)
    overlap = min(overlap, tile // 2)
    align = window_alignment(model, tile)
    rows = plan_tiles(h, w, tile, overlap, align)
    autocast = autocast or contextlib.nullcontext()
    device = torch.device(device)
    out = np.empty((h * scale, w * scale, c), dtype=out_dtype)
    total = sum(len(r) for r in rows)
    done = 0
    bits = 16 if out_dtype == np.uint16 else 8
    # The float accumulator holds one tile row (its row 0 is output row y0 of the tile row being blended),
    # allocated once and reused: growing it per row (and dividing a whole row at once) faulted in gigabytes
    # per row of a big photo. Row i starts where row i-1's final rows end, so one tile row's height suffices.
    height = max(r[0].y1 - r[0].y0 for r in rows) * scale
    acc = np.zeros((height, w * scale, c), np.float32)
    wsum = np.zeros((height, w * scale), np.float32)
    for i, row in enumerate(rows):
        y0, y1 = row[0].y0 * scale, row[0].y1 * scale
        lead_y = (rows[i - 1][0].y1 - row[0].y0) * scale if i > 0 else 0
        trail_y = (row[0].y1 - rows[i + 1][0].y0) * scale if i + 1 < len(rows) else 0
        wy = ramp(y1 - y0, max(lead_y, 0), max(trail_y, 0))
        for b in range(0, len(row), batch_tiles):
            group = range(b, min(b + batch_tiles, len(row)))
            shapes = {(row[j].y1 - row[j].y0, row[j].x1 - row[j].x0) for j in group}
            outs: list[tuple[int, np.ndarray]] = []
            for shape in shapes:  # equal shapes share a batch; edge tiles go alone
                same = [j for j in group if (row[j].y1 - row[j].y0, row[j].x1 - row[j].x0) == shape]
                tiles = [image[row[j].y0:row[j].y1, row[j].x0:row[j].x1, :c] for j in same]
                outs += list(zip(same, _forward_batch(model, tiles, device, tta, autocast)))
            for j, res in sorted(outs, key=lambda pair: pair[0]):  # left to right, as the row runs
                t = row[j]
                lead_x = (row[j - 1].x1 - t.x0) * scale if j > 0 else 0
                trail_x = (t.x1 - row[j + 1].x0) * scale if j + 1 < len(row) else 0
                wx = ramp((t.x1 - t.x0) * scale, max(lead_x, 0), max(trail_x, 0))
                weight = wy[:, None] * wx[None, :]
                xs = slice(t.x0 * scale, t.x1 * scale)
                res *= weight[..., None]  # the batch's own output: weighted in place, no tile-sized temporary
                acc[:y1 - y0, xs] += res
                wsum[:y1 - y0, xs] += weight
                done += 1
                if on_tile:
                    on_tile(done, total)
        # rows above the next tile row are final: round them into the output a slab at a time (a bounded
        # float temporary), then move the rows the next tile row still blends into to the top
        final_end = rows[i + 1][0].y0 * scale if i + 1 < len(rows) else h * scale
        n_final = final_end - y0  # > 0: tile rows start strictly below each other
        for a in range(0, n_final, FINALIZE_ROWS):
            z = min(n_final, a + FINALIZE_ROWS)
            block = acc[a:z] / np.maximum(wsum[a:z, :, None], 1e-8)
            from_float(block, bits, out=out[y0 + a:y0 + z])
        kept = y1 - final_end
        acc[:kept], wsum[:kept] = acc[n_final:n_final + kept], wsum[n_final:n_final + kept]
        acc[kept:], wsum[kept:] = 0, 0
    return out
