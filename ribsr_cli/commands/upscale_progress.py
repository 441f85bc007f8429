"""The progress bar of `ribsr upscale`: counted in megapixels, advanced tile by tile.

A batch of camera files can spend minutes on one photo; a bar that counts files then sits at `0/24`
with no estimate. Here the bar's unit is input megapixels (read from the file headers before any
work), each finished tile advances it by its share of the photo, and the ETA follows from the
megapixels done. The text beside it says which file of how many, and which tile of how many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def header_megapixels(path: Path) -> float:
    """Input size in megapixels from the file header (no decoding); 0 when the header cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1] / 1e6
    except Exception:  # the file fails later with its own reason
        return 0.0


class BatchProgress:
    """One bar for the whole batch; `on_tile` is the tiler's callback for the file in progress."""

    def __init__(self, jobs: list[Any], console: Any, *, disable: bool) -> None:
        self.weights = {id(j): max(header_megapixels(j.source), 1e-3) for j in jobs}
        self.count = len(jobs)
        self.index = 0
        self.base = 0.0  # megapixels of the files already finished
        self.current = 0.0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[tiles]}"),
                                 TextColumn("{task.completed:.2f}/{task.total:.2f} MP"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console, disable=disable, transient=False)
        self.task = self.progress.add_task("files", total=sum(self.weights.values()) or 1.0, tiles="")

    def __enter__(self) -> "BatchProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start_file(self, job: Any) -> None:
        self.index += 1
        self.current = self.weights.get(id(job), 1e-3)
        self.progress.update(self.task, description=f"file {self.index}/{self.count} {job.source.name[:32]}",
                             tiles="", completed=self.base)

    def on_tile(self, done: int, total: int) -> None:
        """Tiles done of this photo: the bar moves by the photo's megapixels in that proportion."""
        share = done / total if total else 1.0
        self.progress.update(self.task, completed=self.base + self.current * share,
                             tiles=f"tile {done}/{total}" if total > 1 else "")

    def finish_file(self, job: Any) -> None:
        self.base += self.current
        self.progress.update(self.task, completed=self.base, tiles="")

    @property
    def completed(self) -> float:
        return float(self.progress.tasks[0].completed)

    def print(self, message: str) -> None:
        self.progress.console.print(message, highlight=False)
