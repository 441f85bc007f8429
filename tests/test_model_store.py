"""The model store: `ribsr models add | remove`, listing, and `-m NAME` in upscale and eval.

Every test gets its own store folder through `$RIBSR_HOME`, and checks what a user would see (exit code, one
line, the listing) and what is on disk (no half-written or temporary file ever left).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURES
from ribsr_cli.cli import app
from ribsr_cli.engine import build_model
from ribsr_cli.engine.checkpoint import load_model, save_model
from ribsr_cli.engine.registry import resolve
from ribsr_cli.errors import CheckpointError, ModelStoreError

REPO = Path(__file__).resolve().parents[1]
LIGHT_FIXTURE = FIXTURES / "light_x4.pt"


@pytest.fixture(autouse=True)
def store_home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "ribsr-home"
    monkeypatch.setenv("RIBSR_HOME", str(home))
    monkeypatch.delenv("RIBSR_WEIGHTS_DIR", raising=False)
    return home


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def listed(kind: str = "stored") -> dict[str, dict]:
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    return {m["name"]: m for m in json.loads(result.output)["models"] if m["source"] == kind}


def store_files(home: Path) -> list[str]:
    folder = home / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def authors_checkpoint(tmp_path: Path) -> tuple[Path, str, str]:
    """(checkpoint, --arch value, expected architecture name) for a checkpoint laid out as the authors' training
    code saves it: {"params": sd, "params_ema": sd}. The reference fixture's network (its own `network_g`,
    given as a JSON file) when the shared fixtures are there, else a perturbed SST-light x4 preset."""
    if LIGHT_FIXTURE.is_file():
        fixture = torch.load(LIGHT_FIXTURE, weights_only=True)
        sd = fixture["state_dict"]
        arch = tmp_path / "network_g.json"
        arch.write_text(json.dumps({"network_g": fixture["config"]}))
        arch_arg, expected = str(arch), "custom"
    else:
        torch.manual_seed(3)
        net = build_model("SST-light-x4")
        sd = {k: v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()}
        arch_arg = expected = "SST-light-x4"
    path = tmp_path / "SST-light_x4.pth"
    torch.save({"params": {f"module.{k}": v for k, v in sd.items()}, "params_ema": sd}, path)
    return path, arch_arg, expected


@pytest.fixture()
def small_checkpoint(tmp_path: Path) -> Path:
    """A ribsr-s x2 network with non-trivial weights, saved as an authors-style .pth (no metadata)."""
    torch.manual_seed(1)
    net = build_model("ribsr-s-x2")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / "my model x2.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def photo_crop(tmp_path: Path, box=(150, 60, 246, 156), name: str = "cat.png") -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    Image.open(REPO / "examples" / "chelsea.png").convert("RGB").crop(box).save(path)
    return path


def test_add_list_use_and_remove_the_authors_checkpoint(tmp_path: Path, store_home: Path) -> None:
    source, arch_arg, arch_name = authors_checkpoint(tmp_path)
    result = invoke("models", "add", source, "--name", "sst-light-x4", "--arch", arch_arg)
    assert result.exit_code == 0, result.output
    entry = listed()["sst-light-x4"]
    assert entry["scale"] == 4 and entry["arch_name"] == arch_name
    assert entry["provenance"]["source_file"] == source.name
    assert entry["provenance"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    stored = Path(entry["path"])
    assert stored.parent == store_home / "models" and stored.suffix == ".safetensors"
    assert entry["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert entry["params"] == sum(v.numel() for v in load_model(source, arch_arg).state_dict().values())
    assert store_files(store_home) == ["sst-light-x4.json", "sst-light-x4.safetensors"]

    # the stored weights are the checkpoint's, exactly: the reference output is reproduced
    loaded = resolve("sst-light-x4", 4)
    assert (loaded.source, loaded.name, loaded.sha256) == ("stored", "sst-light-x4", entry["sha256"])
    net = loaded.network
    if LIGHT_FIXTURE.is_file():
        fixture = torch.load(LIGHT_FIXTURE, weights_only=True)
        with torch.no_grad():
            assert (net(fixture["input"]) - fixture["output"]).abs().max() < 1e-4

    # by name it upscales exactly as the source file does
    photo = photo_crop(tmp_path, box=(170, 70, 218, 118))  # 48x48: the cat's face
    by_name = invoke("upscale", photo, "-s", "4", "-m", "sst-light-x4", "-o", tmp_path / "a", "-q")
    by_file = invoke("upscale", photo, "-s", "4", "-m", source, "--arch", arch_arg, "-o", tmp_path / "b", "-q")
    assert by_name.exit_code == 0 and by_file.exit_code == 0, by_name.output + by_file.output
    a = np.asarray(Image.open(tmp_path / "a" / "cat_x4.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "cat_x4.png"))
    assert a.shape == (192, 192, 3) and np.array_equal(a, b)

    removed = invoke("models", "remove", "sst-light-x4")
    assert removed.exit_code == 0, removed.output
    assert "sst-light-x4" not in listed() and store_files(store_home) == []
    gone = invoke("upscale", photo, "-s", "4", "-m", "sst-light-x4", "-o", tmp_path / "c")
    assert gone.exit_code == 2 and "neither a shipped or stored model" in gone.output


def test_stored_model_scores_like_its_file_in_eval(tmp_path: Path, small_checkpoint: Path, benchmarks_dir: Path) -> None:
    assert invoke("models", "add", small_checkpoint).exit_code == 0
    assert "my-model-x2" in listed()  # the default name: the file's stem, cleaned
    scores = {}
    for label, model in (("name", "my-model-x2"), ("file", small_checkpoint)):
        out = tmp_path / f"{label}.json"
        result = invoke("eval", benchmarks_dir / "Set5", "-s", "2", "-m", model, "--json", out, "-q")
        assert result.exit_code == 0, result.output
        rows = [r for r in json.loads(out.read_text())["results"] if r["method"] != "bicubic"]
        scores[label] = (rows[0]["psnr_y"], rows[0]["ssim_y"])
    assert scores["name"] == scores["file"]


def test_name_clashes_are_refused_and_leave_the_store_unchanged(small_checkpoint: Path, store_home: Path) -> None:
    shipped = invoke("models", "add", small_checkpoint, "--name", "ribsr-s-x2")
    assert shipped.exit_code == 2
    assert "a shipped model already has this name" in shipped.output and len(shipped.output.strip().splitlines()) == 1
    assert invoke("models", "add", small_checkpoint, "--name", "mine").exit_code == 0
    before = {p: p.read_bytes() for p in (store_home / "models").iterdir()}
    again = invoke("models", "add", small_checkpoint, "--name", "MINE")  # names are case-insensitive
    assert again.exit_code == 2 and "a stored model already has this name" in again.output
    assert {p: p.read_bytes() for p in (store_home / "models").iterdir()} == before
    bad = invoke("models", "add", small_checkpoint, "--name", "../escape")
    assert bad.exit_code == 2 and "not a valid model name" in bad.output


def test_corrupt_foreign_and_pickled_files_are_one_line_errors(tmp_path: Path, store_home: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint at all")
    truncated = tmp_path / "truncated.safetensors"
    save_model(build_model("ribsr-s-x2"), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    pickled = tmp_path / "code.pth"
    torch.save({"params": {"proj.weight": torch.zeros(1)}, "payload": Path("/etc")}, pickled)  # needs unpickling code
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, foreign)
    for path, reason in ((garbage, "not a readable tensor checkpoint"), (truncated, "not a readable tensor checkpoint"),
                         (pickled, "not a readable tensor checkpoint"), (foreign, "not an SST checkpoint"),
                         (tmp_path / "missing.pth", "no such file")):
        result = invoke("models", "add", path)
        assert result.exit_code == 1, (path, result.output)
        line = result.output.strip()
        assert len(line.splitlines()) == 1 and reason in line and str(path) in line and "Traceback" not in line
    assert store_files(store_home) == []


def test_wrong_architecture_is_refused(tmp_path: Path, small_checkpoint: Path, store_home: Path) -> None:
    wrong = invoke("models", "add", small_checkpoint, "--arch", "SST-light-x2")
    assert wrong.exit_code == 1 and "does not fit the architecture" in wrong.output
    unknown = invoke("models", "add", small_checkpoint, "--arch", "no-such-arch")
    assert unknown.exit_code == 1 and "unknown architecture" in unknown.output
    own = tmp_path / "with-metadata.safetensors"  # ribsr's own files name their architecture
    save_model(build_model("ribsr-s-x2"), own)
    mismatch = invoke("models", "add", own, "--arch", "ribsr-s-x4")
    assert mismatch.exit_code == 1 and "does not match the architecture stored in the file" in mismatch.output
    assert store_files(store_home) == []


def test_a_tampered_stored_file_is_refused(tmp_path: Path, small_checkpoint: Path, store_home: Path) -> None:
    assert invoke("models", "add", small_checkpoint, "--name", "mine").exit_code == 0
    stored = store_home / "models" / "mine.safetensors"
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF  # one weight changed: the file still loads, but it is not what was stored
    stored.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="sha256 mismatch.*remove"):
        resolve("mine", 2)
    result = invoke("upscale", photo_crop(tmp_path), "-m", "mine", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "sha256 mismatch" in result.output
    assert not (tmp_path / "out" / "cat_x2.png").exists()


@pytest.mark.parametrize("fail_on", ["mine.safetensors", "mine.json"])
def test_an_interrupted_add_leaves_nothing_half_written(small_checkpoint: Path, store_home: Path, monkeypatch,
                                                        fail_on: str) -> None:
    """Ctrl-C while the weights or the card is renamed into place: no model, no weights, no temporary file."""
    import ribsr_cli.engine.store as store
    from ribsr_cli import fileutil

    real_replace = fileutil.os.replace

    def interrupted(src, dst):
        if Path(dst).name == fail_on:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(fileutil.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.add_model(small_checkpoint, "mine")
    monkeypatch.setattr(fileutil.os, "replace", real_replace)
    assert "mine" not in listed()
    assert store_files(store_home) == []
    with pytest.raises(CheckpointError, match="neither a shipped or stored model"):
        resolve("mine", 2)
    store.add_model(small_checkpoint, "mine")  # the name is free again
    assert "mine" in listed()
    torch.testing.assert_close(resolve("mine", 2).network.state_dict(), load_model(small_checkpoint).state_dict(),
                               rtol=0, atol=0)


def test_shipped_models_cannot_be_removed_and_unknown_names_are_clear() -> None:
    shipped = invoke("models", "remove", "ribsr-s-x2")
    assert shipped.exit_code == 2 and "a shipped model cannot be removed" in shipped.output
    unknown = invoke("models", "remove", "nothing-here")
    assert unknown.exit_code == 2 and "no stored model of this name" in unknown.output


def test_listing_needs_no_torch(store_home: Path) -> None:
    """`ribsr models` lists from JSON alone: it must not import torch (it answers in a fraction of a second)."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from ribsr_cli.cli import app; "
            "r = CliRunner().invoke(app, ['models']); assert r.exit_code == 0, r.output; "
            "assert 'ribsr-s-x2' in r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_bench_takes_the_architecture_of_a_named_model(tmp_path: Path, small_checkpoint: Path) -> None:
    assert invoke("models", "add", small_checkpoint, "--name", "mine").exit_code == 0
    out = tmp_path / "bench.json"
    result = invoke("bench", "--quick", "-m", "mine", "--windows", "8", "--repeats", "1", "--json", out, "-q")
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["network"]
    assert rows and {r["preset"] for r in rows} == {"mine"}
