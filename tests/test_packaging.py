"""The package as users get it: a wheel (and the sdist it comes from) that carries the shipped weights.

The wheel is installed non-editable into a fresh virtual environment that reuses this interpreter's
packages (torch included: `--system-site-packages`, `--no-deps`, `--no-index`), and ribsr is run from a
temporary folder, away from the checkout, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import ribsr_cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


def build(kind: str, source: Path, out: Path) -> Path:
    """Build a wheel or sdist of `source` with this interpreter's setuptools (no download, no isolation)."""
    out.mkdir(parents=True, exist_ok=True)
    code = (f"import sys; from setuptools import build_meta as b; "
            f"print(b.build_{kind}(sys.argv[1]))")
    name = run([sys.executable, "-c", code, str(out)], cwd=source).stdout.strip().splitlines()[-1]
    return out / name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build("wheel", REPO, tmp_path_factory.mktemp("dist"))


def test_wheel_installs_and_upscales_with_its_own_weights(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python, ribsr = venv / "bin" / "python", venv / "bin" / "ribsr"
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    work = tmp_path / "somewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RIBSR_WEIGHTS_DIR", "PYTHONPATH")}
    env["RIBSR_HOME"] = str(tmp_path / "home")

    where = run([str(python), "-c", "import ribsr_cli; print(ribsr_cli.__file__)"], cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv), "the venv must import the installed wheel, not the checkout"
    assert run([str(ribsr), "--version"], cwd=work, env=env).stdout.strip() == f"ribsr {ribsr_cli.__version__}"

    listing = json.loads(run([str(ribsr), "models", "--json"], cwd=work, env=env).stdout)
    assert Path(listing["weights_dir"]).is_relative_to(venv)
    shipped = {m["name"]: m for m in listing["models"] if m["source"] == "shipped"}
    manifest = json.loads((REPO / "weights" / "MANIFEST.json").read_text())["models"]
    assert set(shipped) == {m["name"] for m in manifest}

    Image.open(REPO / "examples" / "chelsea.png").crop((100, 40, 260, 160)).save(work / "cat.png")  # 160x120
    run([str(ribsr), "upscale", "cat.png", "-q"], cwd=work, env=env)  # the default model, default output folder
    with Image.open(work / "upscaled" / "cat_x2.png") as out:
        assert out.size == (320, 240)


def test_sdist_holds_what_builds_the_wheel_and_runs_the_tests(tmp_path: Path) -> None:
    sdist = build("sdist", REPO, tmp_path / "dist")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "src", filter="data")
    for needed in ("pyproject.toml", "weights/MANIFEST.json", "tests/conftest.py", "tests/test_model_store.py",
                   "examples/astronaut.png", "README.md", "CHANGELOG.md"):
        assert needed in names, needed
    for entry in json.loads((REPO / "weights" / "MANIFEST.json").read_text())["models"]:
        assert f"weights/{entry['file']}" in names
    unpacked = next((tmp_path / "src").iterdir())
    rebuilt = build("wheel", unpacked, tmp_path / "dist2")
    import zipfile

    with zipfile.ZipFile(rebuilt) as whl:
        assert "ribsr_cli/weights/MANIFEST.json" in whl.namelist()


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ribsr_cli").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"


def test_changelog_has_a_heading_for_this_version() -> None:
    assert f"## [{ribsr_cli.__version__}]" in (REPO / "CHANGELOG.md").read_text()
