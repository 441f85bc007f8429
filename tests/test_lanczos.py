"""imaging/lanczos.py: the final resize of `upscale --outscale`, on a real photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribsr_cli.imaging.lanczos import final_size, resize_to

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "coffee.png"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB").crop((100, 100, 300, 260)))


def test_8bit_matches_pillows_own_rgb_lanczos(photo: np.ndarray) -> None:
    """Pillow's 8-bit RGB path is the independent reference: fixed-point weights and an 8-bit intermediate
    between its two passes, so it may differ by a few levels where Lanczos overshoots; ours stays in float."""
    ours = resize_to(photo, 133, 107).astype(int)
    theirs = np.asarray(Image.fromarray(photo).resize((133, 107), Image.Resampling.LANCZOS)).astype(int)
    diff = np.abs(ours - theirs)
    assert ours.shape == (107, 133, 3) and diff.mean() < 0.3 and np.percentile(diff, 99) <= 1 and diff.max() <= 6


def test_16bit_keeps_its_precision_and_range(photo: np.ndarray) -> None:
    fine = np.arange(photo.shape[1])[None, :, None] % 200  # detail below one 8-bit step
    deep = np.clip(photo.astype(np.int64) * 257 + fine, 0, 65535).astype(np.uint16)
    out = resize_to(deep, 150, 120)
    assert out.dtype == np.uint16 and out.shape == (120, 150, 3)
    assert len(np.unique(out)) > 256  # finer steps than 8 bits
    eight = resize_to(photo, 150, 120).astype(float)
    assert np.abs(out / 257.0 - eight).max() < 2.5  # the same picture, at either depth


def test_hard_edges_clip_instead_of_wrapping() -> None:
    edge = np.zeros((40, 40), np.uint8)
    edge[:, 20:] = 255  # Lanczos overshoots on both sides of this step
    out = resize_to(edge, 27, 27)
    assert out.dtype == np.uint8 and out[:, 0].max() == 0 and out[:, -1].min() == 255


def test_same_size_is_untouched_and_final_size_rounds(photo: np.ndarray) -> None:
    assert resize_to(photo, photo.shape[1], photo.shape[0]) is photo
    assert final_size(451, 300, 1.5) == (676, 450) and final_size(1, 1, 1.2) == (1, 1)
    with pytest.raises(TypeError):
        resize_to(photo.astype(np.float32), 10, 10)
