"""The `ribsr` command: a Typer app that only wires sub-commands together.

Each sub-command lives in `ribsr_cli/commands/<name>.py` and exposes a function named `command` (or, for a
command with sub-commands such as `models`, a Typer `app`); heavy imports (torch) happen inside those
functions so that `ribsr --help` stays fast. Commands are imported statically: a missing module is a bug,
not a command to skip.

This is also the one place that turns ribsr's expected errors (`ribsr_cli.errors.RibsrError`) into the
one-line `error: PATH: reason` message and the error's exit code, for every command.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable

import typer

from ribsr_cli import __version__
from ribsr_cli.commands import bench, data, evaluate, export, info, models, train, upscale
from ribsr_cli.commands.helpformat import HelpfulCommand, HelpfulGroup, epilog_for
from ribsr_cli.errors import RibsrError

# (sub-command name, module, one-line help)
COMMANDS: list[tuple[str, ModuleType, str]] = [
    ("upscale", upscale, "Upscale image files and folders (tiled, batch-safe)."),
    ("eval", evaluate, "PSNR/SSIM on benchmark sets with the standard SR protocol."),
    ("bench", bench, "Time RIB against RPB attention, side by side."),
    ("data", data, "Training photos: fetch them from Debian packages, prepare the HR pool for train."),
    ("train", train, "Train a RIB-SR model on CPU or GPU."),
    ("export", export, "Ship a trained run: measure it, copy its weights into weights/, update the manifest."),
    ("info", info, "Print the environment: version, torch, devices, attention kernels."),
    ("models", models, "List usable models (shipped and stored); add or remove stored models."),
]

app = typer.Typer(
    name="ribsr",
    help="ribsr — super-resolution upscaling with a RIB Transformer (SST) on FlashAttention.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=HelpfulGroup,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ribsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """ribsr — super-resolution upscaling with a RIB Transformer (SST)."""


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; a RibsrError becomes `error: <its line>` on stderr and its exit code, never a traceback."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RibsrError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return run


def _register() -> None:
    from typer.core import TyperCommand

    for name, mod, help_text in COMMANDS:
        sub_app = getattr(mod, "app", None)
        if isinstance(sub_app, typer.Typer):
            for info_ in sub_app.registered_commands:
                info_.callback = guarded(info_.callback)
                if info_.cls in (None, TyperCommand):
                    info_.cls = HelpfulCommand
            if sub_app.registered_callback is not None:
                sub_app.registered_callback.callback = guarded(sub_app.registered_callback.callback)
            app.add_typer(sub_app, name=name, help=help_text, epilog=epilog_for(name, mod) or None, cls=HelpfulGroup)
        else:
            app.command(name, help=help_text, epilog=epilog_for(name, mod) or None, cls=HelpfulCommand)(guarded(mod.command))


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
