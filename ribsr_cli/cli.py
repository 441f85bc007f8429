"""The `ribsr` command: a Typer app that only wires sub-commands together.

Each sub-command lives in `ribsr_cli/commands/<name>.py` and exposes a function
named `command`; heavy imports (torch) happen inside those modules so that
`ribsr --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from ribsr_cli import __version__

# (sub-command name, module under ribsr_cli.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("upscale", "upscale", "Upscale image files and folders (tiled, batch-safe)."),
    ("eval", "evaluate", "PSNR/SSIM on benchmark sets with the standard SR protocol."),
    ("bench", "bench", "Time RIB against RPB attention, side by side."),
    ("train", "train", "Train a RIB-SR model on CPU or GPU."),
    ("info", "info", "Print the environment: torch, devices, attention kernels."),
    ("models", "models", "List architecture presets and shipped weights."),
]

app = typer.Typer(
    name="ribsr",
    help="ribsr — super-resolution upscaling with a RIB Transformer (SST) on FlashAttention.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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


def _register() -> None:
    for name, module, help_text in COMMANDS:
        try:
            mod = importlib.import_module(f"ribsr_cli.commands.{module}")
        except ModuleNotFoundError as exc:  # a command still under construction
            if exc.name != f"ribsr_cli.commands.{module}":
                raise
            continue
        app.command(name, help=help_text)(mod.command)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
