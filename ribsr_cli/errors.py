"""ribsr's error model: every expected failure is a `RibsrError` with a path, a reason and an exit code.

`str()` is always one line ("PATH: reason", or the reason alone when no file or option is at fault), so the
CLI prints it as it is, without a traceback; the exit code travels with the error's class, so a command
needs no table of its own to map classes to codes: it raises, and `cli.guarded` prints `error: <line>` and
exits with the code. Errors that older callers catch as ValueError, OSError or RuntimeError derive from
that built-in too (`class ImageWriteError(RibsrError, OSError)`).

This module imports nothing heavy (no torch), so light commands such as `ribsr models` can use it.
"""

from __future__ import annotations

from pathlib import Path

EXIT_FAILURE = 1  # the work ran and something failed (a file, a model)
EXIT_USAGE = 2  # the command line asks for something that cannot be done


class RibsrError(Exception):
    """An expected failure, told in one line: `path: reason`.

    `RibsrError(path, reason)` names what is at fault (a file, a folder, an option such as `--tile`);
    `RibsrError(reason)` is for failures that belong to no one path.
    """

    exit_code: int = EXIT_FAILURE

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:
            path, reason = "", str(path)
        reason = " ".join(str(reason).split())  # one line, whatever the cause printed
        super().__init__(f"{path}: {reason}" if str(path) else reason)
        self.path, self.reason = str(path), reason


class UsageError(RibsrError, ValueError):
    """The command line asks for something that cannot be done (a bad value, options that exclude each
    other, an optional extra that is not installed); raised before any work where possible."""

    exit_code = EXIT_USAGE


class CheckpointError(RibsrError, ValueError):
    """A checkpoint cannot be read, does not fit its architecture, or fails its integrity check."""


class ModelStoreError(CheckpointError):
    """A model-store operation was refused (name clash, bad name, unknown model, tampered file)."""

    exit_code = EXIT_USAGE
