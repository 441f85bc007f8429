"""How every command's `--help` reads: no `<bool>` after on/off flags, no type labels on arguments,
and examples at the end.

Typer labels every option with its Python type, so a flag reads `--overwrite <bool>` and invites
`--overwrite true` (which then makes "true" an input file). `HelpfulCommand` drops the label from
flags and arguments; options keep the metavar their command gives them. The examples come from the
command module's `EXAMPLES` (or this module's table, for commands that do not define their own).
"""

from __future__ import annotations

import functools
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

EXAMPLES: dict[str, list[str]] = {
    "upscale": [
        "ribsr upscale photo.jpg                     # -> upscaled/photo_x2.jpg",
        "ribsr upscale shoot/ -r -s 4 -o big/        # a whole tree, mirrored under big/",
        "ribsr upscale -i photo.jpg -s 3.5 -t 256    # Real-ESRGAN style: final 3.5x, 256 px tiles",
        "ribsr upscale 'raw/*.tif' --format png --json report.json",
        "ribsr upscale shoot/ -r --dry-run           # list what would be done, check the output folder",
    ],
    "eval": [
        "ribsr eval $RIBSR_SHARED/benchmarks/Set5 -s 2,3,4          # shipped models and bicubic",
        "ribsr eval Set5 Set14 -s 4 -m ribsr-s-x4 --json results.json --per-image",
        "ribsr eval Set5 --no-model                                 # bicubic only, no model",
    ],
    "bench": [
        "ribsr bench --quick                     # under a minute on 2 CPU cores",
        "ribsr bench --train --json bench.json --plot bench.png",
        "ribsr bench --device cuda --precision fp16 --all-kernels",
    ],
    "train": [
        "ribsr train --arch ribsr-s -s 2 -o runs/ribsr-s-x2 --max-minutes 60",
        "ribsr train --arch ribsr-s -s 2 -o runs/ribsr-s-x2       # resumes from runs/ribsr-s-x2/last.pt",
    ],
    "info": [
        "ribsr info            # devices and the attention kernel each --attention choice runs",
        "ribsr info --json",
    ],
}


def epilog_for(name: str, module: Any) -> str:
    """The examples block of one command's help (rich markup: each line its own paragraph)."""
    lines = getattr(module, "EXAMPLES", None) or EXAMPLES.get(name, [])
    if not lines:
        return ""
    escaped = [line.replace("[", "\\[") for line in lines]
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in escaped)


class _PlainPlaceholders:
    """Help shows value placeholders only where a value is expected."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""  # Typer prints `<bool>` otherwise
            elif isinstance(param, TyperArgument):
                param.display_type_rich = _no_type  # type: ignore[method-assign]
                param._usage_display_name = functools.partial(_usage_name, param)  # type: ignore[method-assign]
        return params


class HelpfulCommand(_PlainPlaceholders, TyperCommand):
    """A Typer command with plain placeholders in its help."""


class HelpfulGroup(_PlainPlaceholders, TyperGroup):
    """A Typer group (a command with sub-commands, such as `models`) with plain placeholders in its help."""


def _no_type(ctx: Any) -> None:
    return None


def _usage_name(param: TyperArgument) -> str:
    """`DATASET...` (required) or `[INPUT...]` (optional), as Unix usage lines write them; Typer writes
    `{DATASET}...`, which reads like shell brace expansion."""
    name = (param.metavar or param.name or "ARG").upper() + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"
