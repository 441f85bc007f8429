"""Draw docs/degradation_samples.png: what `ribsr train --degradation real` feeds the network, for a person to judge.

One row per (example photo, scale): the HR crop, its clean MATLAB-bicubic LR, the fixed eval recipe's LR
(`degrade_for_eval`), then seeded samples of the training pipeline (`degrade`, seeds 0, 1, 2, ...). Every LR
is enlarged with nearest neighbour to the HR crop's size, so blur, noise and JPEG blocks show as they are.

    python3 scripts/degradation_grid.py [--out docs/degradation_samples.png] [--samples 5] [--crop 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ribsr_cli.imaging.resize import bicubic_degrade
from ribsr_cli.training.degrade import degrade, degrade_for_eval, to_uint8

REPO = Path(__file__).resolve().parents[1]
HEADER = 18  # pixels of caption above each column


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """A size x size crop from the middle of the photo (where the examples keep their detail)."""
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


def enlarge(lr: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour enlargement to size x size: every LR pixel stays visible as a block."""
    return np.asarray(Image.fromarray(lr).resize((size, size), Image.NEAREST))


def row(hr: np.ndarray, scale: int, samples: int) -> list[np.ndarray]:
    size = hr.shape[0]
    tiles = [hr, enlarge(bicubic_degrade(hr, scale), size), enlarge(degrade_for_eval(hr, scale), size)]
    hr_float = torch.from_numpy(hr).permute(2, 0, 1).float() / 255.0
    for seed in range(samples):
        lr = to_uint8(degrade(hr_float, scale, seed)).permute(1, 2, 0).numpy()
        tiles.append(enlarge(lr, size))
    return tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "degradation_samples.png")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--crop", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)

    photos = sorted((REPO / "examples").glob("*.png"))
    rows = [(p.stem, s, row(centre_crop(np.asarray(Image.open(p).convert("RGB")), args.crop), s, args.samples))
            for s in (2, 4) for p in photos]
    captions = ["HR", "bicubic", "eval recipe"] + [f"seed {i}" for i in range(args.samples)]
    gap, size = 4, args.crop
    width = len(captions) * (size + gap) + 80
    height = HEADER + len(rows) * (size + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(captions):
        draw.text((80 + c * (size + gap) + 4, 3), text, fill="black")
    for r, (name, scale, tiles) in enumerate(rows):
        y = HEADER + r * (size + gap)
        draw.text((4, y + size // 2 - 12), f"{name}\nx{scale}", fill="black")
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (80 + c * (size + gap), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({width}x{height}, {len(rows)} rows)")


if __name__ == "__main__":
    main()
