"""Draw docs/real_photo_demo.png: a real JPEG photo upscaled four ways, side by side, for a person to judge.

Panels (one crop of the same place): the input (nearest-neighbour enlarged, so its noise and JPEG blocks show
as they are), bicubic (MATLAB imresize), `ribsr-s` (the clean default), `ribsr-s-real` (`-m real`), and
optionally `--denoise` mixes. Nothing is degraded synthetically: the input is the file itself.

    python3 scripts/real_photo_demo.py [--photo examples/rocket.jpg] [--scale 2] [--box X Y SIZE]
                                       [--denoise 0.5] [--out docs/real_photo_demo.png]

The models come from the shipped weights (`$RIBSR_WEIGHTS_DIR` to try a trial folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ribsr_cli.engine.runner import RunOptions, load_upscaler
from ribsr_cli.imaging.resize import imresize_np

REPO = Path(__file__).resolve().parents[1]
HEADER = 18  # pixels of caption above each panel
GAP = 4


def model_output(lr: np.ndarray, scale: int, model: str | None, denoise: float | None = None) -> tuple[str, np.ndarray]:
    """(label, ×scale uint8 image) from a shipped model: no -m (the clean default), `real`, or a --denoise mix."""
    upscaler = load_upscaler(model, scale, RunOptions(device="cpu").for_scoring(), denoise=denoise)
    return upscaler.name, upscaler(lr, scale)


def panel(img: np.ndarray, caption: str) -> Image.Image:
    out = Image.new("RGB", (img.shape[1], img.shape[0] + HEADER), "white")
    out.paste(Image.fromarray(img), (0, HEADER))
    ImageDraw.Draw(out).text((3, 3), caption, fill="black")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "rocket.jpg")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--box", type=int, nargs=3, metavar=("X", "Y", "SIZE"), default=(300, 150, 112),
                    help="the crop, in input pixels (left, top, side)")
    ap.add_argument("--denoise", type=float, action="append", default=[], help="also show this --denoise mix")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "real_photo_demo.png")
    args = ap.parse_args()
    torch.set_num_threads(2)

    with Image.open(args.photo) as im:
        lr = np.asarray(im.convert("RGB"))
    x, y, size = args.box
    if x + size > lr.shape[1] or y + size > lr.shape[0]:
        raise SystemExit(f"{args.photo}: the box {x},{y} +{size} leaves the {lr.shape[1]}x{lr.shape[0]} image")
    s = args.scale
    sr_box = (slice(y * s, (y + size) * s), slice(x * s, (x + size) * s))
    crop = lr[y:y + size, x:x + size]
    panels = [panel(np.asarray(Image.fromarray(crop).resize((size * s, size * s), Image.NEAREST)),
                    f"input {args.photo.name} (nearest)"),
              panel(imresize_np(lr, float(s))[sr_box], f"bicubic x{s}")]
    for model, denoise in [(None, None)] + [(None, d) for d in args.denoise] + [("real", None)]:
        label, sr = model_output(lr, s, model, denoise)  # the whole photo, so crop borders are the model's own
        panels.append(panel(sr[sr_box], label))
    width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
    sheet = Image.new("RGB", (width, panels[0].height), "white")
    left = 0
    for p in panels:
        sheet.paste(p, (left, 0))
        left += p.width + GAP
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
