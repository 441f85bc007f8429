"""Stopping a run cleanly: Ctrl-C or `kill` ends it after the step in progress, with a checkpoint."""

from __future__ import annotations

import signal
import threading
from typing import Any


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run after the step in progress; the checkpoint is saved."""


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop reads between steps, so a stop never lands mid-step and always
    ends in a checkpoint (`kill` of a nohup'ed run included). A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C is a plain KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def interrupted(self, step: int) -> TrainingInterrupted:
        """The error to raise once the run has checkpointed after a signal."""
        return TrainingInterrupted(f"interrupted ({signal.Signals(self.signal).name}) at step {step}; "
                                   f"resume with the same command")
