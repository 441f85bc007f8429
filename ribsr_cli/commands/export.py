"""`ribsr export`: ship a trained run (measure it, copy its EMA weights into weights/, update the manifest).

The flags live here; the work is in ribsr_cli.training.export. Defaults that depend on where the data is
(`--benchmarks`: <shared>/benchmarks; `--photo`: the repository's examples/astronaut.png) are resolved when
the command runs, so it works from any directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = [
    "ribsr export runs/ribsr-s-x2 --name ribsr-s-x2 --default",
    "ribsr export runs/ribsr-s-real-x2 --name ribsr-s-real-x2   # never --default",
    "ribsr export --remeasure ribsr-s-x2    # add degraded scores only",
    "ribsr export --readme                  # re-render README's models table",
    "RIBSR_WEIGHTS_DIR=/tmp/trial ribsr export runs/x --name x  # a trial",
]

SUMMARY_KEYS = ("name", "scale", "params", "sha256", "variant", "metrics", "metrics_degraded",
                "cpu_seconds_per_input_mp")


def command(
    run: Optional[Path] = typer.Argument(None, metavar="RUN",
                                         help="Run folder holding best.safetensors and/or ema.safetensors."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME", help="Name of the shipped model."),
    readme: bool = typer.Option(False, "--readme", help="Only re-render README's models table from the manifest."),
    remeasure: Optional[List[str]] = typer.Option(
        None, "--remeasure", metavar="NAME",
        help="Add degraded-input scores to this shipped model's entry (repeatable); weights untouched."),
    default: bool = typer.Option(False, "--default", help="Make it the default model for its scale."),
    checkpoint: str = typer.Option(
        "auto", "--checkpoint", metavar="auto|best|last",
        help="Which EMA to ship: best = its best validation score, last = the final one, auto = best if kept."),
    benchmarks: Optional[Path] = typer.Option(None, "--benchmarks", metavar="DIR",
                                              help="Folder holding Set5/ and Set14/ (default <shared>/benchmarks)."),
    photo: Optional[Path] = typer.Option(None, "--photo", metavar="FILE",
                                         help="Photo for the CPU timing (default examples/astronaut.png)."),
    hardware: Optional[str] = typer.Option(None, "--hardware", metavar="TEXT",
                                           help="What the run trained on, when not one CPU thread throughout."),
) -> None:
    """Ship a trained run: measure it with the eval protocol, copy its weights, update MANIFEST.json and README."""
    from ribsr_cli.catalog import manifest
    from ribsr_cli.errors import RibsrError, UsageError
    from ribsr_cli.paths import REPO_ROOT, benchmarks_dir
    from ribsr_cli.training.export import export, readme_path, remeasure as remeasure_model, update_readme

    readme_file = readme_path()
    if readme:
        if not update_readme(readme_file, manifest()):
            raise RibsrError(readme_file, "models-table markers not found")
        return
    benchmarks = benchmarks or benchmarks_dir()
    if remeasure:
        for model_name in remeasure:
            entry = remeasure_model(model_name, benchmarks)
            typer.echo(json.dumps({k: entry[k] for k in ("name", "sha256", "metrics_degraded")}, indent=2))
        update_readme(readme_file, manifest())
        return
    if run is None or not name:
        raise UsageError("give a run folder and --name (or --readme, or --remeasure NAME)")
    entry = export(run, name, default, benchmarks, photo or REPO_ROOT / "examples" / "astronaut.png", hardware,
                   checkpoint)
    typer.echo(json.dumps({k: entry[k] for k in SUMMARY_KEYS}, indent=2))
    update_readme(readme_file, manifest())
