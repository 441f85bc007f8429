"""Training batches: random HR crops from the photo pool, augmented, and their LR made on the fly.

LR is the benchmark degradation itself (MATLAB bicubic on the uint8 crop, rounded to uint8, as `ribsr eval`
makes it), or with degradation "real" the seeded camera-like pipeline of `training.degrade`; both on 8-bit
levels, as a file would hold them. Every random choice comes from the one numpy stream the checkpoint saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ribsr_cli.training.pool import HRPool

if TYPE_CHECKING:
    from ribsr_cli.training.degrade import DegradationConfig


def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and 0-3 quarter turns (the 8 dihedral symmetries)."""
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.rot90(crop, int(rng.integers(4)))


def make_batch(pool: HRPool, rng: np.random.Generator, batch: int, patch: int, scale: int,
               degradation: str = "bicubic", ranges: "DegradationConfig | None" = None, detail_ref: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, hr) float batches in [0, 1]; LR = MATLAB bicubic of the uint8 HR crop, rounded to uint8, or with
    degradation "real" the seeded camera-like pipeline of training.degrade (with `ranges`, else its
    defaults), also stored on uint8 levels."""
    lr, hr, _ = make_batch_with_damage(pool, rng, batch, patch, scale, degradation, ranges, detail_ref)
    return lr, hr


def make_batch_with_damage(pool: HRPool, rng: np.random.Generator, batch: int, patch: int, scale: int,
                           degradation: str = "bicubic", ranges: "DegradationConfig | None" = None,
                           detail_ref: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`make_batch` and each sample's damage vector (`engine.damage.Damage.vector`; zeros for bicubic LR),
    or None when a sample took the two-order chain, whose damage is no three numbers. Draws exactly what
    `make_batch` draws, so a run's batches do not depend on whether its network is damage-conditioned."""
    from ribsr_cli.engine.damage import DAMAGE_CHANNELS
    from ribsr_cli.imaging.resize import imresize
    from ribsr_cli.training.degrade import DEFAULT_CONFIG, DEGRADATIONS, degrade_batch_with_damage

    if degradation not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    crops = [np.ascontiguousarray(augment(pool.random_crop(rng, patch * scale, detail_ref), rng))
             for _ in range(batch)]
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()  # uint8 (B,3,H,W)
    if degradation == "real":
        lr, damage = degrade_batch_with_damage(hr, scale, rng, ranges or DEFAULT_CONFIG)
    else:
        lr, damage = imresize(hr, 1.0 / scale), torch.zeros(batch, DAMAGE_CHANNELS)
    return lr.float() / 255.0, hr.float() / 255.0, damage


#: places drawn for a detail-biased patch inside its region before the last one is taken as it is
PATCH_PLACE_TRIES = 8


def make_batch_in_context(pool: HRPool, rng: np.random.Generator, batch: int, patch: int, context: int, scale: int,
                          ranges: "DegradationConfig | None" = None, detail_ref: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lr, hr, context_lr) float batches: each sample's camera-like LR is made as a (context, context) LR
    region, and its (patch, patch) training pair is cut from the region at a random place (HR at scale times
    the LR place, where the bicubic protocol maps it). context_lr is the whole region: what a damage estimator
    reads to tell the network, as `upscale` reads 128-px crops of a whole image rather than the tile it runs.

    detail_ref > 0 biases the region as `HRPool.random_crop` does, and the patch inside it by the same rule:
    up to PATCH_PLACE_TRIES places, each kept by `pool.keeps_detail` (detail / detail_ref, at least FLAT_KEEP), the
    last one taken regardless. A smaller region than the patch is an error."""
    from ribsr_cli.training.degrade import DEFAULT_CONFIG, degrade_batch_with_damage
    from ribsr_cli.training.pool import keeps_detail

    if context < patch:
        raise ValueError(f"the context ({context} px) must be at least the patch ({patch} px)")
    regions = [np.ascontiguousarray(augment(pool.random_crop(rng, context * scale, detail_ref), rng))
               for _ in range(batch)]
    hr_regions = torch.from_numpy(np.stack(regions)).permute(0, 3, 1, 2).contiguous()
    lr_regions, _ = degrade_batch_with_damage(hr_regions, scale, rng, ranges or DEFAULT_CONFIG)
    lrs, hrs = [], []
    for region, lr_region in zip(regions, lr_regions):
        for _ in range(PATCH_PLACE_TRIES if detail_ref > 0 else 1):
            y, x = (int(v) for v in rng.integers(0, context - patch + 1, size=2))
            hr = region[y * scale:(y + patch) * scale, x * scale:(x + patch) * scale]
            if detail_ref <= 0 or keeps_detail(hr, rng, detail_ref):
                break
        lrs.append(lr_region[:, y:y + patch, x:x + patch])
        hrs.append(torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1))
    return (torch.stack(lrs).float() / 255.0, torch.stack(hrs).float() / 255.0, lr_regions.float() / 255.0)
