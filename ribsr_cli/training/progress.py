"""How the training-data steps (fetch, prepare) report progress: a callable that takes one line.

They run for minutes, so they say what they are doing as they go; the default writes to stderr, which
leaves stdout to the final summary a script may capture. Callers (the CLI, tests) pass their own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]


def to_stderr(line: str) -> None:
    """Write one progress line to stderr at once (a long step must not look stuck)."""
    print(line, file=sys.stderr, flush=True)
