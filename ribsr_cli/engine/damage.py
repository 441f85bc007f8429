"""Damage conditioning: what the camera did to a photo, as three numbers a network can be told.

Why: a blind real-photo model must pick one strength of clean-up for every input. Measured (issue 17,
0.6.0): the x2 model trained on the typical camera range gained +0.90 dB over bicubic on the held-out photos
under the official `--degrade real` recipe, while a run trained on that recipe alone gained +1.10 dB, and the
same recipe-only run lost 1.3 dB on light damage. The network could do better; it did not know how much
damage to undo. A *damage-conditioned* network (`SSTConfig.damage_channels`) is told: three constant maps
(blur, noise, JPEG) convolved into the first feature map beside the LR image's own convolution, as SRMD
(Zhang et al. 2018) conditions on its degradation maps. At run time a small `DamageEstimator`, trained on the same camera model,
reads them from the LR image itself, once per image (`estimate_image_damage`), so every tile of an image
is told the same thing.

The three numbers, in photographers' units (`Damage`), and the vector the networks see (`Damage.vector`):
- blur: Gaussian sigma of the optics/demosaicing blur, in LR pixels (0 = sharp); unit BLUR_UNIT;
- noise: the sensor noise's standard deviation in luminance (BT.601 Y), on 8-bit levels at mid grey; unit
  NOISE_UNIT. Noise of sigma s per channel is s in Y when grey (the same in every channel) and s·|LUMA| =
  0.67 s when colour (independent per channel); Poisson noise of peak P has s = 255·sqrt(0.5 / P)
  (`luma_noise`). Why luminance (0.9.0; 0.7.0-0.8.0 were told the per-channel s): after JPEG's 4:2:0 chroma
  the colour part of the noise is all but gone (a 256-px crop of examples/coffee.png, x2, noise of 5 levels
  per channel: the chroma detail of grey and colour noise, 8.0 and 17.3 levels before JPEG q85, 5.8 and 5.9
  after; tests/test_damage.py), so per-channel s could not be read from a file, and a network
  told "4" had to hedge between the two luminance noises it meant (4 and 2.7): on Set5 under the official
  recipe (colour noise of 4) the 0.8.0 x2 run scored best when told 2-3, under the same recipe with grey
  noise at the true 4-5.
- jpeg: the JPEG quality the file was saved at (100 = no JPEG), as (100 - quality) / JPEG_UNIT.
Zero in every component is a clean bicubic LR: the conditioned network starts from the clean weights with the
conditioning weights zero (`engine.grow`), so it then computes exactly the clean network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.pixels import LUMA

#: how many numbers describe the damage (blur, noise, JPEG)
DAMAGE_CHANNELS = 3
BLUR_UNIT = 1.0  # LR px
NOISE_UNIT = 8.0  # 8-bit levels
JPEG_UNIT = 40.0  # quality points below 100
#: the estimator reads at most this many crops of this side (LR px) from an image, spread over a grid, and
#: takes the per-component median: the cost stays fixed on a 24 MP photo and a clipped sky does not decide
ESTIMATE_CROP = 128
ESTIMATE_MAX_CROPS = 16
#: the estimator's high-pass input is amplified so that a few 8-bit levels of noise are not lost beside the image
HIGH_PASS_GAIN = 16.0
#: JPEG's minimum coded unit with 4:2:0 chroma (16 px): crops start on it, so the 8x8 luma and the 16x16
#: chroma blocks fall where the estimator learned them
JPEG_MCU = 16


@dataclass(frozen=True)
class Damage:
    """Camera damage in photographers' units: blur sigma (LR px), luminance noise sigma (8-bit levels), JPEG
    quality."""

    blur: float = 0.0
    noise: float = 0.0
    jpeg: float = 100.0

    def vector(self) -> list[float]:
        """The network's conditioning values (see the module docstring)."""
        return [self.blur / BLUR_UNIT, self.noise / NOISE_UNIT, (100.0 - self.jpeg) / JPEG_UNIT]

    @classmethod
    def from_vector(cls, values: "list[float] | torch.Tensor") -> "Damage":
        """The inverse of `vector`, clamped to what is physical (no negative blur or noise, quality <= 100)."""
        blur, noise, jpeg = (max(0.0, float(v)) for v in values)
        return cls(blur * BLUR_UNIT, noise * NOISE_UNIT, 100.0 - jpeg * JPEG_UNIT)

    @staticmethod
    def poisson_sigma(peak: float) -> float:
        """The 8-bit standard deviation per channel of Poisson noise of `peak` counts at mid grey."""
        return 255.0 * math.sqrt(0.5 / peak)

    def describe(self) -> str:
        """e.g. "blur 0.40 px, noise 4.0 levels, JPEG q80" (what `upscale -v` prints for an image)."""
        jpeg = "no JPEG" if self.jpeg >= 99.5 else f"JPEG q{self.jpeg:.0f}"
        return f"blur {self.blur:.2f} px, noise {self.noise:.1f} levels, {jpeg}"


def luma_noise(sigma: float, grey: bool) -> float:
    """The luminance standard deviation (`Damage.noise`) of noise of `sigma` per channel: grey noise is one
    field in every channel (Y weights sum to 1), colour noise independent fields (Y's std is |LUMA| sigma)."""
    return sigma if grey else sigma * math.sqrt(sum(w * w for w in LUMA))


class DamageEstimator(nn.Module):
    """LR image (B, 3, H, W) in [0, 1] → damage vectors (B, DAMAGE_CHANNELS).

    Two full-resolution 3x3 convolutions see single-pixel noise and the 8x8 JPEG grid before anything is
    pooled; three stride-2 stages widen the view for blur; a global mean makes it any-size. ~76 k parameters:
    a 128-px crop costs well under a millisecond of a super-resolution tile's time.
    """

    def __init__(self, channels: int = DAMAGE_CHANNELS, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(6, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Linear(2 * width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the damage is in the differences between neighbouring pixels, a few levels in size, not in the
        # brightness: the image's own high-pass, amplified, sits beside the centred image
        # in its weights' precision whatever the input's (fp32 as shipped; a float64 network's in the DDP test)
        dtype = self.head.weight.dtype
        x = x.to(dtype).contiguous(memory_format=torch.contiguous_format)
        detail = HIGH_PASS_GAIN * (x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1))
        feat = self.features(torch.cat([x - 0.5, detail], dim=1))
        return self.head(feat.to(dtype).mean(dim=(2, 3)))


def crop_grid(h: int, w: int, side: int = ESTIMATE_CROP, max_crops: int = ESTIMATE_MAX_CROPS) -> list[tuple[int, int]]:
    """Top-left corners of up to `max_crops` side x side crops spread evenly over an h x w image.

    Corners sit on the JPEG grid (multiples of JPEG_MCU from the image's origin, where every decoder puts
    it): the blocking is the estimator's clearest cue, and a crop that cuts the 8x8 blocks mid-way reads
    as a different, weaker damage (measured: Set5's baby read as clean off the grid, JPEG q76 on it)."""
    def starts(length: int) -> list[int]:
        last = (length - side) // JPEG_MCU * JPEG_MCU
        per_axis = max(1, int(math.isqrt(max_crops)))
        return sorted({round(i * last / max(1, per_axis - 1) / JPEG_MCU) * JPEG_MCU for i in range(per_axis)})

    return [(y, x) for y in starts(h) for x in starts(w)]


@torch.no_grad()
def estimate_image_damage(estimator: nn.Module, image: np.ndarray) -> torch.Tensor:
    """The damage vector (DAMAGE_CHANNELS,) of one LR image, (H, W, 3) uint8/uint16/float as `upscale` reads
    it: the per-component median over `crop_grid`'s crops (only the crops are converted to float), in fp32 on
    the estimator's device, at least 0."""
    from ribsr_cli.pixels import to_float

    device = next(estimator.parameters()).device
    h, w = image.shape[:2]
    side = min(ESTIMATE_CROP, h, w)
    crops = np.stack([to_float(np.ascontiguousarray(image[y:y + side, x:x + side, :3]))
                      for y, x in crop_grid(h, w, side)])
    batch = torch.from_numpy(crops).permute(0, 3, 1, 2).to(device)
    with torch.autocast(device.type, enabled=False):
        vectors = estimator(batch)
    return vectors.median(dim=0).values.clamp_min(0.0)


def damage_maps(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, C) damage vectors as constant (B, C, H, W) maps shaped like `like` (its device and dtype)."""
    return vectors.to(device=like.device, dtype=like.dtype)[:, :, None, None].expand(-1, -1, *like.shape[-2:])
