"""The prepared HR pool: one flat uint8 file of images back to back, and a JSON index of where each one is.

`training.prepare` writes it; `HRPool` memory-maps it and hands the trainer random crops cheaply, paging in
only what is read, so a pool larger than memory trains as well as a small one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

import numpy as np

from ribsr_cli.pixels import LUMA

POOL_FILE = "hr.u8"
INDEX_FILE = "index.json"
POOL_FORMAT = "ribsr-hr-pool/1"

#: With detail-biased crops (`HRPool.random_crop`'s detail_ref), the chance a crop as flat as a clear sky is
#: kept: flat regions stay in training (a model must still clean a noisy sky), one in ten as often as detail.
FLAT_KEEP = 0.1


def detail(crop: np.ndarray) -> float:
    """The mean absolute vertical luma step plus the mean absolute horizontal one, in 8-bit levels: ~1 on sky
    or bokeh, ~10 to 20 on the foliage, fur and fabric of an ordinary photograph."""
    y = crop[..., :3].astype(np.float32) @ np.array(LUMA, dtype=np.float32)
    return float(np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean())


def keeps_detail(crop: np.ndarray, rng: np.random.Generator, detail_ref: float) -> bool:
    """The detail bias's draw (`HRPool.random_crop`): keep `crop` with probability detail / detail_ref, at
    least FLAT_KEEP and at most 1 (one `rng.random()`; detail_ref > 0)."""
    return bool(rng.random() < max(FLAT_KEEP, min(1.0, detail(crop) / detail_ref)))


class PoolEntry(TypedDict):
    """One image of a prepared pool, as listed in index.json."""

    name: str
    offset: int  # bytes into hr.u8
    height: int
    width: int
    sha256: str  # of the source photo


class HRPool:
    """Random HR crops from a prepared pool, memory-mapped so the OS pages in only what is read.

    Each call is O(log n) plus the copy of one crop: the per-size table of
    eligible images and their cumulative areas is built once and cached.
    """

    def __init__(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        index_path = out_dir / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{index_path} not found: run scripts/get_training_photos.sh, then `ribsr data prepare`")
        index = json.loads(index_path.read_text())
        if index.get("format") != POOL_FORMAT:
            raise ValueError(f"{index_path}: format {index.get('format')!r} is not {POOL_FORMAT!r}; "
                             "run `ribsr data prepare` again")
        self.entries: list[PoolEntry] = index["images"]
        if not self.entries:
            raise ValueError(f"{index_path} lists no images")
        total = int(index["total_bytes"])
        data = np.memmap(out_dir / POOL_FILE, dtype=np.uint8, mode="r", shape=(total,))
        self._views = []
        for e in self.entries:
            off, h, w = e["offset"], e["height"], e["width"]
            self._views.append(data[off:off + h * w * 3].reshape(h, w, 3))
        self._sizes = np.array([v.shape[:2] for v in self._views], dtype=np.int64)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._views)

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.entries]

    @property
    def megapixels(self) -> float:
        return float(self._sizes.prod(axis=1).sum()) / 1e6

    def image(self, i: int) -> np.ndarray:
        """Read-only (H, W, 3) view of image `i`."""
        return self._views[i]

    def _table(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size not in self._tables:
            ok = np.flatnonzero((self._sizes[:, 0] >= size) & (self._sizes[:, 1] >= size))
            if ok.size == 0:
                raise ValueError(f"no image in the pool is at least {size}x{size}")
            self._tables[size] = (ok, np.cumsum(self._sizes[ok].prod(axis=1)).astype(np.float64))
        return self._tables[size]

    def random_crop(self, rng: np.random.Generator, size: int, detail_ref: float = 0.0) -> np.ndarray:
        """A (size, size, 3) uint8 copy from an image chosen with probability ∝ its area, at a uniform place.

        detail_ref > 0 biases crops toward detail: each draw is kept with probability
        detail / detail_ref (at least FLAT_KEEP, so at most 1 / FLAT_KEEP draws on average; at most 1), else
        redrawn. Why: the prepared wallpapers are mostly sky and bokeh (measured on the 83-photo pool, 96-px
        crops: median `detail` 3.9 levels against 10 to 18 on photographs and benchmark images), so a model
        trained on uniform crops learns that fine variation is noise to remove and wipes texture from real
        photographs. 0 keeps uniform crops and the random stream of earlier runs."""
        if detail_ref <= 0:
            return self._uniform_crop(rng, size)
        while True:
            crop = self._uniform_crop(rng, size)
            if keeps_detail(crop, rng, detail_ref):
                return crop

    def _uniform_crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        ok, cum = self._table(size)
        i = ok[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(ok) - 1)]
        h, w = self._sizes[i]
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        return np.array(self._views[i][y:y + size, x:x + size])
