"""What a run reports as it goes: `log.csv`, a live bar on a terminal, a line per validation.

Only rank 0 reports (one writer per file). log.csv gets a row every ROW_EVERY steps and at each validation:
step, the running (EMA-smoothed) whole-batch loss, learning rate, validation PSNR-Y (3 decimals, empty when
not validated) and training minutes. In a nohup'ed run (no tty) the CSV and the validation lines are the record.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Callable

LOG_FILE = "log.csv"
HEADER = ["step", "loss", "lr", "val_psnr_y", "minutes"]
#: a log.csv row every this many steps (and at every validation)
ROW_EVERY = 50


class RunLog:
    def __init__(self, out: Path, rank: int, step: int, total_steps: int, log: Callable[[str], None]) -> None:
        from tqdm import tqdm

        self.enabled = rank == 0
        self.log = log
        self.running_loss = 0.0
        self._file = (out / LOG_FILE).open("a", newline="") if self.enabled else None
        self._writer = csv.writer(self._file) if self._file is not None else None
        if self._file is not None and self._file.tell() == 0:
            self._writer.writerow(HEADER)
        self.bar = tqdm(total=total_steps or None, initial=step, unit="step", dynamic_ncols=True,
                        disable=not self.enabled or not sys.stderr.isatty())

    def step_done(self, loss: float) -> None:
        """Count a step and fold its whole-batch loss into the running loss (0.98 smoothing)."""
        self.bar.update(1)
        self.running_loss = 0.98 * self.running_loss + 0.02 * loss if self.running_loss else loss

    def validated(self, step: int, lr: float, psnr: str, minutes: float, total_steps: int) -> None:
        self.bar.total = total_steps
        self.bar.set_postfix(loss=f"{self.running_loss:.4f}", val_psnr=psnr)
        (self.bar.write if not self.bar.disable else self.log)(
            f"step {step} loss {self.running_loss:.4f} lr {lr:.2e} val PSNR-Y {psnr} dB ({minutes:.1f} min)")

    def row(self, step: int, lr: float, psnr: str, minutes: float) -> None:
        """A log.csv row when it is due (every ROW_EVERY steps, or `psnr` given)."""
        if self._writer is None or not (step % ROW_EVERY == 0 or psnr):
            return
        self._writer.writerow([step, f"{self.running_loss:.5f}", f"{lr:.3e}", psnr, f"{minutes:.2f}"])
        self._file.flush()

    def close(self) -> None:
        self.bar.close()
        if self._file is not None:
            self._file.close()
