"""Shared test fixtures: paths to the read-only shared data beside the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ribsr_cli.paths import shared_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_dir()
BENCHMARKS = SHARED / "benchmarks"
FIXTURES = SHARED / "fixtures" / "sst_reference"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session", autouse=True)
def private_ribsr_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's own `$RIBSR_HOME`: no test reads the user's stored models or writes the user's cache (the
    attention-strategy probe's measurements); tests that need an empty store still set their own."""
    import os

    home = tmp_path_factory.mktemp("ribsr-home")
    before = os.environ.get("RIBSR_HOME")
    os.environ["RIBSR_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("RIBSR_HOME", None)
    else:
        os.environ["RIBSR_HOME"] = before


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"benchmark images not found at {BENCHMARKS}")
    return BENCHMARKS


def _needs_shared_data(report: pytest.TestReport) -> bool:
    """A skip whose reason is missing shared data (benchmark images, reference fixtures, photo list)."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return str(SHARED) in reason or "reference fixtures not available" in reason


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Say once, under the summary, why tests skipped for want of the shared data and how to point at it.

    A fresh clone has no `../shared`; without this its run reads "152 skipped" with no reason given.
    """
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _needs_shared_data(r)]
    if not skipped:
        return
    terminalreporter.write_sep("-", "shared test data not found")
    terminalreporter.write_line(f"{len(skipped)} test(s) skipped: they need the benchmark images (Set5, Set14 with "
                                f"HR/ and LR_bicubic/) and the reference fixtures, looked for in {SHARED}")
    terminalreporter.write_line("point RIBSR_SHARED at the folder holding benchmarks/Set5 and benchmarks/Set14, e.g. "
                                "RIBSR_SHARED=/path/to/shared python3 -m pytest -q (README: 'Benchmark data')")


# ---- shared by the upscale, tiling and CLI tests -------------------------------------------------------------

@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny images run faster on one thread than fighting a busy machine for two (use with usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-init ribsr-s-x2 checkpoint: tiling and file handling must be exact whatever the weights."""
    import torch

    from ribsr_cli.engine import build_model
    from ribsr_cli.engine.checkpoint import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "rand-s-x2.safetensors"
    save_model(build_model("ribsr-s-x2"), path)
    return path


def crop(name: str, box: tuple[int, int, int, int]):
    """An RGB crop (PIL image) of one of the example photos."""
    from PIL import Image

    with Image.open(EXAMPLES / name) as im:
        return im.convert("RGB").crop(box)


def coffee(w: int = 48, h: int = 40):
    """High-contrast real content (cup rim on a table), non-square so rotations show."""
    return crop("coffee.png", (200, 150, 200 + w, 150 + h))


def upscale(model: Path | None, *args: str | Path):
    """Run `ribsr upscale ARGS [-m MODEL]` in-process; never a traceback, whatever happens."""
    from typer.testing import CliRunner

    from ribsr_cli.cli import app

    argv = ["upscale", *map(str, args)] + (["-m", str(model)] if model is not None else [])
    result = CliRunner().invoke(app, argv)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture(scope="session")
def pool(tmp_path_factory) -> Path:
    """A tiny HR training pool from the repository's example photos (real content, not benchmark images),
    prepared once for every training test."""
    from ribsr_cli.training.prepare import prepare

    out = tmp_path_factory.mktemp("pool")
    prepare(EXAMPLES, out, downscale=1, benchmark_dirs=[], log=lambda _: None)
    return out
