"""ribsr's error model: every expected failure is a `RibsrError` with a path, a reason and an exit code.

`str()` is always one line ("PATH: reason"), so the CLI can print it as it is, without a traceback; the
exit code travels with the error so a command needs no table of its own to map classes to codes.
This module imports nothing heavy (no torch), so light commands such as `ribsr models` can use it.
"""

from __future__ import annotations

from pathlib import Path

EXIT_FAILURE = 1  # the work ran and something failed (a file, a model)
EXIT_USAGE = 2  # the command line asks for something that cannot be done


class RibsrError(Exception):
    """An expected failure, told in one line: `path: reason`."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, path: str | Path, reason: str) -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the cause printed
        super().__init__(f"{path}: {reason}" if str(path) else reason)
        self.path, self.reason = str(path), reason


class CheckpointError(RibsrError, ValueError):
    """A checkpoint cannot be read, does not fit its architecture, or fails its integrity check."""


class ModelStoreError(CheckpointError):
    """A model-store operation was refused (name clash, bad name, unknown model, tampered file)."""

    exit_code = EXIT_USAGE
