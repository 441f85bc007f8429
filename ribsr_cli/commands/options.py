"""The option vocabulary that upscale, eval and bench share: one name and one value syntax per idea.

`--precision auto|fp32|bf16|fp16`, `--tile auto|N` and `--attention auto|flash|sdpa|math` mean the same
in every command; the names they replaced (`bench --dtype`) stay as hidden aliases for a release, merged
here so each command reads one value. Checks that need no model (an unavailable kernel, a missing
device) are usage errors before any work, never one failure per file: each raises a `UsageError`
naming the option and its value, which `cli.guarded` prints as `error: --tile 16: ...` with exit status 2.
"""

from __future__ import annotations

import math
from typing import Optional

from ribsr_cli.errors import UsageError


def parse_tile(value: str) -> int | str:
    """`auto` or a whole number of LR pixels (0: whole image); the same rule in upscale and eval. The
    smallest tile is the runner's rule (`RunOptions.resolve` checks it), so this needs no engine."""
    value = value.strip().lower()
    if value == "auto":
        return "auto"
    try:
        tile = int(value)
    except ValueError:
        raise UsageError(f"--tile {value}", "use a number of LR pixels, 0 (whole image) or auto") from None
    if tile < 0:
        raise UsageError(f"--tile {value}", "use a number of LR pixels, 0 (whole image) or auto")
    return tile


def merge_alias(value: Optional[str], alias: Optional[str], name: str, alias_name: str) -> Optional[str]:
    """The value of `name`, or of its hidden old spelling; both given with different values is an error."""
    if alias is None:
        return value
    if value is not None and value != alias:
        raise UsageError(f"{name} {value} {alias_name} {alias}", f"{alias_name} is the old name of {name}; give one of them")
    return alias


def normalise_format(value: str, choices: tuple[str, ...]) -> str:
    """`--format` value with the spellings other tools use (jpeg, tif, upper case) accepted: any spelling
    that the image writer's aliases (imaging.io_write.FORMAT_ALIASES) give the same format as a choice."""
    from ribsr_cli.imaging.io_write import FORMAT_ALIASES, canonical_format

    by_format = {canonical_format(choice): choice for choice in choices}
    fmt = by_format.get(canonical_format(value))
    if fmt is None:
        spellings = {name.lower() for pair in FORMAT_ALIASES.items() for name in pair}
        others = sorted(s for s in spellings if canonical_format(s) in by_format and s not in choices)
        accepted = f" ({' and '.join(others)} {'is' if len(others) == 1 else 'are'} accepted too)" if others else ""
        raise UsageError(f"--format {value}", f"choose one of {', '.join(choices)}{accepted}")
    return fmt


def parse_scale(value: Optional[str]) -> tuple[Optional[int], Optional[float]]:
    """(model scale, final factor) from `-s`: 2/3/4 pick the model; a fraction such as 3.5 is read as
    `--outscale 3.5`, which is what `-s` means in Real-ESRGAN."""
    from ribsr_cli.upscaling import MODEL_SCALES

    if value is None:
        return None, None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise UsageError(f"--scale {value}", "use a model scale 2, 3 or 4, or a final factor such as 3.5 (read as --outscale)")
    if number in MODEL_SCALES:
        return int(number), None
    if 1 <= number <= MODEL_SCALES[-1]:
        return None, number
    raise UsageError(f"--scale {value}", "model scales are 2, 3 and 4; a final factor between 1 and 4 (e.g. 3.5) "
                                    "is read as --outscale")
