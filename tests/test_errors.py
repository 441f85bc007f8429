"""One error model: every expected failure in ribsr is a RibsrError, and every command prints it the same way.

`cli.guarded` is the one place that turns an error into `error: PATH: reason` on one line and the class's exit
status (2: the command line asks for the impossible; 1: the work failed). These tests find every exception class
the package defines, so a new one that skips the model fails here, and push each through a real command.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ribsr_cli
from conftest import EXAMPLES
from ribsr_cli import cli
from ribsr_cli.errors import EXIT_FAILURE, EXIT_USAGE, RibsrError

PACKAGE = Path(ribsr_cli.__file__).parent

# The exit status of every error class: usage errors 2, failures 1. A new class must be placed here.
EXIT_CODES = {
    "ribsr_cli.errors.UsageError": EXIT_USAGE,
    "ribsr_cli.training.config.FlagConflict": EXIT_USAGE,
    "ribsr_cli.errors.CheckpointError": EXIT_FAILURE,
    "ribsr_cli.errors.ModelStoreError": EXIT_USAGE,
    "ribsr_cli.evaluation.EvalError": EXIT_USAGE,
    "ribsr_cli.bench.report.PlotUnavailable": EXIT_USAGE,
    "ribsr_cli.bench.core.RibMismatch": EXIT_FAILURE,
    "ribsr_cli.imaging.io_read.ImageReadError": EXIT_FAILURE,
    "ribsr_cli.imaging.io_write.ImageWriteError": EXIT_FAILURE,
    "ribsr_cli.imaging.metadata.ExifError": EXIT_FAILURE,
    "ribsr_cli.engine.kernels.KernelUnavailable": EXIT_FAILURE,
    "ribsr_cli.engine.spandrel_import.TorchvisionUnavailable": EXIT_FAILURE,
    "ribsr_cli.engine.tiling.OutOfMemory": EXIT_FAILURE,
    "ribsr_cli.training.export.ExportError": EXIT_FAILURE,
    "ribsr_cli.training.fetch.FetchError": EXIT_FAILURE,
    "ribsr_cli.training.manifest.ManifestError": EXIT_FAILURE,
}
# Exceptions that are not failures: a training run stopped by a signal exits 130 with its checkpoint saved.
NOT_ERRORS = {"TrainingInterrupted"}


def _modules() -> list:
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "ribsr_cli.") if not m.name.endswith("__main__")]
    return [importlib.import_module(name) for name in names]


@functools.cache
def _exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def _instance(cls: type[RibsrError], path: str, reason: str) -> RibsrError:
    """An instance as the code raises it; RibMismatch is built from the failed check it reports."""
    if cls.__name__ == "RibMismatch":
        from ribsr_cli.bench.core import Check

        return cls(Check(max_abs_err=0.5, ok=False, tolerance=1e-4, details=[f"{path}: {reason}"]))
    return cls(path, reason)


def test_every_exception_class_is_a_ribsr_error_with_its_exit_code() -> None:
    classes = _exception_classes()
    outside = sorted(name for name, cls in classes.items()
                     if not issubclass(cls, RibsrError) and cls.__name__ not in NOT_ERRORS)
    assert outside == [], "derive these from ribsr_cli.errors.RibsrError (or UsageError)"
    codes = {name: cls.exit_code for name, cls in classes.items() if issubclass(cls, RibsrError) and cls is not RibsrError}
    assert codes == EXIT_CODES


def test_existing_catches_still_hold() -> None:
    """Callers that catch the built-in bases (OSError around writes, RuntimeError around kernels) keep working."""
    classes = _exception_classes()
    assert issubclass(classes["ribsr_cli.imaging.io_write.ImageWriteError"], OSError)
    assert issubclass(classes["ribsr_cli.imaging.io_read.ImageReadError"], ValueError)
    for name in ("engine.kernels.KernelUnavailable", "engine.tiling.OutOfMemory", "bench.core.RibMismatch",
                 "bench.report.PlotUnavailable", "engine.spandrel_import.TorchvisionUnavailable"):
        assert issubclass(classes[f"ribsr_cli.{name}"], RuntimeError), name
    for name in ("evaluation.EvalError", "errors.UsageError", "errors.CheckpointError"):
        assert issubclass(classes[f"ribsr_cli.{name}"], ValueError), name


@pytest.mark.parametrize("name", sorted(EXIT_CODES))
def test_each_error_is_one_line_and_its_exit_code_through_a_command(name: str, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Raised inside a real command (`ribsr info`), any RibsrError becomes one `error:` line and its status."""
    import ribsr_cli.commands.info as info

    cls = _exception_classes()[name]
    path = tmp_path / "photo one.png"
    error = _instance(cls, str(path), "it went\n  wrong\tin two lines")

    def fails() -> dict:
        raise error

    monkeypatch.setattr(info, "environment", fails)
    result = CliRunner().invoke(cli.app, ["info", "--json"])
    assert result.exit_code == EXIT_CODES[name], result.output
    assert result.output.splitlines() == [f"error: {error}"]
    assert f"{path}: it went wrong in two lines" in result.output and "Traceback" not in result.output


def test_a_reason_alone_has_no_empty_path() -> None:
    from ribsr_cli.upscaling import UsageError

    error = UsageError("--ray needs Ray Data")
    assert str(error) == "--ray needs Ray Data" and error.path == "" and error.reason == "--ray needs Ray Data"


# ---- real failures, unprompted, through the commands ------------------------------------------------------------


def _one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_bad_option_values_are_usage_errors_naming_the_option(tmp_path: Path) -> None:
    photo = EXAMPLES / "chelsea.png"
    runner = CliRunner()
    line = _one_error_line(runner.invoke(cli.app, ["upscale", str(photo), "--tile", "16", "-o", str(tmp_path)]), 2)
    assert line.startswith("error: --tile 16: ") and "at least 32" in line
    line = _one_error_line(runner.invoke(cli.app, ["upscale", str(photo), "-f", "gif", "-o", str(tmp_path)]), 2)
    assert line.startswith("error: --format gif: ")
    line = _one_error_line(runner.invoke(cli.app, ["train", "--degradation", "foggy", "--out", str(tmp_path)]), 2)
    assert line == "error: --degradation foggy: choose bicubic or real"
    assert list(tmp_path.iterdir()) == []


def test_train_without_a_pool_is_one_usage_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["train", "--data", str(tmp_path / "no-pool"), "--out", str(tmp_path / "run"),
                                          "--val", "", "--steps", "1"])
    line = _one_error_line(result, 2)
    assert str(tmp_path / "no-pool") in line and "ribsr data prepare" in line


def test_model_store_and_checkpoint_errors_through_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIBSR_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    line = _one_error_line(runner.invoke(cli.app, ["models", "remove", "nothing-here"]), 2)
    assert line == "error: nothing-here: no stored model of this name (see `ribsr models`)"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00 not a checkpoint")
    line = _one_error_line(runner.invoke(cli.app, ["models", "add", str(garbage)]), 1)
    assert line.startswith(f"error: {garbage}: not a readable tensor checkpoint")


# ---- the command table is static ----------------------------------------------------------------------------------


def test_every_command_module_is_registered_statically() -> None:
    """cli.py imports each command module by name (no importlib, no skipped command), and registers them all."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "ribsr_cli.commands" for alias in node.names}
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                and "importlib" in ast.unparse(n)]
    modules = {p.stem for p in (PACKAGE / "commands").glob("*.py")
               if any(f"\n{kind}" in p.read_text() for kind in ("def command(", "app = typer.Typer("))}
    assert modules <= imported
    assert {mod.__name__.rsplit(".", 1)[1] for _, mod, _ in cli.COMMANDS} == modules
