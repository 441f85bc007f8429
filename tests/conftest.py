"""Shared test fixtures: paths to the read-only shared data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RIBSR_SHARED", REPO.parent / "shared"))
BENCHMARKS = SHARED / "benchmarks"
FIXTURES = SHARED / "fixtures" / "sst_reference"


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"benchmark images not found at {BENCHMARKS}")
    return BENCHMARKS
