"""Issue 18: the CLI a newcomer expects, one test (or more) per item, through the real command line.

Inputs are crops of the photos in `examples/` (so every test runs without the shared data) and the
shipped ribsr-s models; each assertion is something the old CLI got wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from ribsr_cli import __version__, upscaling
from ribsr_cli.cli import COMMANDS, app
from ribsr_cli.commands import upscale_progress
from ribsr_cli.evaluation import bicubic_upscaler
from ribsr_cli.imaging.metrics import psnr

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")
X2_WEIGHTS = REPO / "weights" / "ribsr-s-x2.safetensors"


def run(*args: str | Path) -> Result:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def flat(text: str) -> str:
    return " ".join(text.split())


def photo(path: Path, name: str = "coffee.png", box: tuple[int, int, int, int] = (200, 150, 296, 230)) -> Path:
    """A crop of a real example photo, saved where the test wants it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(EXAMPLES / name) as im:
        im.convert("RGB").crop(box).save(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eval_set(root: Path) -> Path:
    """A plain image folder of three real photo crops (eval makes their LR with MATLAB bicubic)."""
    for i, name in enumerate(("coffee.png", "chelsea.png", "astronaut.png")):
        photo(root / f"img{i}.png", name, (100, 60, 196, 156))
    return root


# ---- 1: --baseline adds a row, never removes the model ------------------------------------------


def test_baseline_adds_bicubic_beside_the_model(tmp_path: Path) -> None:
    folder = eval_set(tmp_path / "Photos")
    out = tmp_path / "r.json"
    result = run("eval", folder, "-s", "2", "--baseline", "bicubic", "--json", out, "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"bicubic", "ribsr-s-x2"} and "ribsr-s-x2" in result.stdout
    # the bicubic row is the independent MATLAB-bicubic score; the model beats it on real photos
    from ribsr_cli.evaluation import discover_dataset, load_pair

    ds = discover_dataset(folder)
    scores = []
    for f in ds.hr_files:
        lr, hr, _ = load_pair(ds, f, 2)
        scores.append(psnr(bicubic_upscaler(lr, 2), hr, 2, True))
    assert rows["bicubic"]["psnr_y"] == pytest.approx(np.mean(scores), abs=1e-5)
    assert rows["ribsr-s-x2"]["psnr_y"] > rows["bicubic"]["psnr_y"] + 0.5
    only = run("eval", folder, "-s", "2", "--no-model", "--json", out, "-q")
    assert only.exit_code == 0 and [r["method"] for r in json.loads(out.read_text())["results"]] == ["bicubic"]


# ---- 2: an unwritable output folder is a usage error before any work, dry runs too ---------------


@pytest.mark.parametrize("dry", [False, True])
def test_unwritable_output_is_found_before_any_work(tmp_path: Path, dry: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = upscaling.process
    monkeypatch.setattr(upscaling, "process", lambda job, *a, **k: calls.append(job.source.name) or real(job, *a, **k))
    src = tmp_path / "src"
    photo(src / "a.png"), photo(src / "sub" / "b.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    extra = ["--dry-run"] if dry else []
    for out in (blocker / "out", Path("/proc/ribsr-out")):  # root ignores permissions; these refuse anyway
        result = run("upscale", src / "a.png", "-o", out, *extra)
        assert result.exit_code == 2 and "cannot" in result.output and str(out) in flat(result.output)
        assert "would write" not in result.output
    # the output root is fine, but a mirrored sub-folder cannot be made: still before the first file
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("in the way")
    result = run("upscale", src, "-r", "-o", out, *extra)
    assert result.exit_code == 2 and "sub" in result.output
    assert calls == [] and sorted(p.name for p in out.iterdir()) == ["sub"]


# ---- 3: Real-ESRGAN / waifu2x habits ------------------------------------------------------------


def test_peer_aliases_i_t_jpeg_tif_and_fractional_s(tmp_path: Path) -> None:
    a = photo(tmp_path / "a.png")
    result = run("upscale", "-i", a, "-t", "32", "--format", "jpeg", "-o", tmp_path / "out", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tile"] == 32 and report["files"][0]["tile"] == 32
    assert Image.open(tmp_path / "out" / "a_x2.jpg").size == (192, 160)
    assert run("upscale", a, "-f", "TIF", "-o", tmp_path / "out").exit_code == 0
    assert Image.open(tmp_path / "out" / "a_x2.tif").size == (192, 160)
    frac = run("upscale", a, "-s", "3.5", "-o", tmp_path / "frac")
    assert frac.exit_code == 0, frac.output
    assert "--outscale 3.5" in flat(frac.output)
    assert Image.open(tmp_path / "frac" / "a_x3.5.png").size == (336, 280)  # 96x80 * 3.5
    bad = run("upscale", a, "-s", "5", "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "--outscale" in flat(bad.output)
    both = run("upscale", a, "-s", "3.5", "--outscale", "3", "-o", tmp_path / "bad")
    assert both.exit_code == 2 and not (tmp_path / "bad").exists()


# ---- 4: help: examples, no <bool>, no brace usage, plain defaults --------------------------------


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_help_has_examples_and_no_bool_metavar(name: str) -> None:
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Examples:" in text and f"ribsr {name}" in text.split("Examples:")[1]
    assert "<bool>" not in text and "{" not in text.splitlines()[1]  # usage line: no {INPUT...}
    if name == "upscale":
        assert "(2)" not in text and "--tile,-t" not in text  # -t shows as a short option
        assert "[INPUT...]" in text and " -t " in text and " -i " in text


@pytest.mark.parametrize("argv", [["models", "add"], ["models", "remove"]])
def test_sub_command_help_has_no_bool_metavar(argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "<bool>" not in result.output and "{" not in result.output.splitlines()[1]


def test_overwrite_is_a_flag_in_help_and_true_is_not_silently_a_file(tmp_path: Path) -> None:
    text = CliRunner().invoke(app, ["upscale", "--help"], env={"COLUMNS": "200"}).output
    line = next(ln for ln in text.splitlines() if "--overwrite" in ln)
    assert "bool" not in line and "true" not in line.lower().split("redo")[0]
    a = photo(tmp_path / "a.png")
    result = run("upscale", "--overwrite", "true", a, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "not --overwrite true" in flat(result.output)
    assert (tmp_path / "out" / "a_x2.png").is_file()  # the real input is still done


# ---- 5: progress inside a photo and the tile/device/precision in -v ------------------------------


def test_progress_moves_tile_by_tile_in_megapixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big, small = photo(tmp_path / "big.png", box=(0, 0, 192, 160)), photo(tmp_path / "small.png")
    seen: list[tuple[float, int, int]] = []
    real = upscale_progress.BatchProgress.on_tile

    def spy(self, done: int, total: int) -> None:
        real(self, done, total)
        seen.append((self.completed, done, total))

    monkeypatch.setattr(upscale_progress.BatchProgress, "on_tile", spy)
    result = run("upscale", big, small, "-t", "32", "-v", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    first = [s for s in seen if s[2] == seen[0][2]][: seen[0][2]]
    total_mp = (192 * 160 + 96 * 80) / 1e6
    assert first[0][2] > 1 and first[-1][1] == first[-1][2]
    assert [s[0] for s in first] == sorted(s[0] for s in first)  # the bar moves inside the photo
    assert first[-1][0] == pytest.approx(192 * 160 / 1e6)  # one photo done = its megapixels
    assert seen[-1][0] == pytest.approx(total_mp)
    text = flat(result.output)
    import torch

    from ribsr_cli.engine.runtime import auto_precision

    ran = auto_precision(torch.device("cpu"))  # bf16 on CPUs with native bf16, else fp32
    assert f"on cpu, {ran}, tile 32 LR px" in text and "tile 32 px" in text


# ---- 6: skip reasons in -v and counted in the summary -------------------------------------------


def test_skip_reasons_are_shown_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    photo(src / "a.png"), photo(src / "b.png")
    assert run("upscale", src, "-o", tmp_path / "out").exit_code == 0
    again = run("upscale", src, "-o", tmp_path / "out", "-v")
    text = flat(again.output)
    assert again.exit_code == 0
    assert f"skipped {src / 'a.png'}: output exists (use --overwrite to redo)" in text
    assert "skipped 2: output exists (use --overwrite to redo)" in text


# ---- 7: a folder with only sub-folders hints at -r -----------------------------------------------


def test_folder_with_only_subfolders_suggests_r(tmp_path: Path) -> None:
    photo(tmp_path / "shoot" / "day1" / "a.png")
    result = run("upscale", tmp_path / "shoot", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "-r" in result.output and "sub-folders" in result.output
    assert run("upscale", tmp_path / "shoot", "-r", "-o", tmp_path / "out").exit_code == 0


# ---- 8: Ctrl-C: its own state, the real time, no empty folder ------------------------------------


def test_ctrl_c_is_interrupted_with_real_time_and_no_empty_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    photo(src / "a.png"), photo(src / "deep" / "b.png")
    from ribsr_cli.engine.runner import Upscaler

    real_run = Upscaler.run

    def slow_then_ctrl_c(self, image, out_dtype, on_tile=None):
        if image.shape[0] == 80 and (tmp_path / "out" / "a_x2.png").exists():  # the second file
            time.sleep(0.4)
            raise KeyboardInterrupt
        return real_run(self, image, out_dtype, on_tile)

    monkeypatch.setattr(Upscaler, "run", slow_then_ctrl_c)
    out = tmp_path / "out"
    result = run("upscale", src, "-r", "-o", out, "--json", tmp_path / "r.json")
    assert result.exit_code == 130
    text = flat(result.output)
    assert "interrupted" in text and "failed" not in text.split("interrupted:")[1]
    files = {Path(f["input"]).name: f for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert files["a.png"]["status"] == "done"
    assert files["b.png"]["status"] == "interrupted" and files["b.png"]["seconds"] >= 0.4
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["interrupted"] == 1 and report["totals"]["failed"] == 0
    assert report["totals"]["elapsed_seconds"] >= 0.4
    seconds = float(text.split(" s │")[0].split("│")[-1])  # the summary's time column
    assert seconds >= 0.4
    assert not (out / "deep").exists()  # the mirrored folder of the file that was not written


# ---- 9: one set of kernel names; unusable kernels are usage errors -------------------------------


def test_info_names_the_kernels_runs_report(tmp_path: Path) -> None:
    info = json.loads(run("info", "--json").stdout)["attention_kernels"]["cpu"]
    assert set(info) == {"auto", "flash", "sdpa", "math"} and info["flash"].startswith("unavailable")
    for choice in ("auto", "math"):
        result = run("upscale", photo(tmp_path / "a.png"), "--attention", choice, "-o", tmp_path / choice,
                     "--json", tmp_path / f"{choice}.json")
        assert result.exit_code == 0, result.output
        ran = json.loads((tmp_path / f"{choice}.json").read_text())["files"][0]["kernels"]
        assert ran == [info[choice]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_unusable_attention_and_device_are_usage_errors_before_work(tmp_path: Path) -> None:
    a = photo(tmp_path / "a.png")
    for args in (["--attention", "flash"], ["--device", "cuda"]):
        result = run("upscale", a, *args, "-o", tmp_path / "out")
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "out").exists()
    folder = eval_set(tmp_path / "Photos")
    for args in (["--attention", "flash"], ["--device", "cuda"]):
        result = run("eval", folder, *args)
        assert result.exit_code == 2 and "ribsr eval" not in result.output


# ---- 10: one option vocabulary ------------------------------------------------------------------


def test_precision_and_tile_mean_the_same_everywhere(tmp_path: Path) -> None:
    bench_help = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"}).output
    assert "--precision" in bench_help and "--dtype" not in bench_help  # the old name is a hidden alias
    for old_or_new in (["--dtype", "fp8"], ["--precision", "fp8"]):
        bad = run("bench", "--quick", *old_or_new)
        assert bad.exit_code == 2 and "precision" in flat(bad.output)
    assert run("bench", "--quick", "--dtype", "fp32", "--precision", "bf16").exit_code == 2
    out = tmp_path / "b.json"
    ok = run("bench", "--quick", "--preset", "ribsr-s", "--windows", "8", "--repeats", "1", "--threads", "1",
             "--dtype", "fp32", "-q", "--json", out)
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["env"]["dtype"] == "fp32"
    folder = eval_set(tmp_path / "Photos")
    for tile in ("auto", "64"):
        result = run("eval", folder, "-t", tile, "--precision", "fp32", "-q", "--json", tmp_path / f"{tile}.json")
        assert result.exit_code == 0, result.output
        protocol = json.loads((tmp_path / f"{tile}.json").read_text())["protocol"]
        assert protocol["tile"] == (64 if tile == "64" else "auto") and protocol["precision"] == "fp32"
    assert run("eval", folder, "--tile", "16").exit_code == 2  # the same rule as upscale's --tile


# ---- 11: reports record what ran -----------------------------------------------------------------


@pytest.mark.skipif(not X2_WEIGHTS.is_file(), reason="no shipped x2 weights")
def test_reports_record_version_device_precision_and_weights_hash(tmp_path: Path) -> None:
    from ribsr_cli.engine.runtime import cpu_native_bf16

    a = photo(tmp_path / "a.png")
    result = run("upscale", a, "-o", tmp_path / "out", "--json", tmp_path / "u.json")
    assert result.exit_code == 0, result.output
    up = json.loads((tmp_path / "u.json").read_text())
    auto = "bf16" if cpu_native_bf16() else "fp32"  # upscale's auto on a CPU (issue 14); eval's stays fp32
    assert up["ribsr_version"] == __version__ and up["device"] == "cpu" and up["precision"] == auto
    assert up["model_sha256"] == sha256(X2_WEIGHTS) and up["tile"] == "auto"
    assert up["totals"]["done"] == 1 and up["totals"]["output_megapixels"] == pytest.approx(192 * 160 / 1e6)
    assert up["totals"]["elapsed_seconds"] >= up["files"][0]["seconds"] > 0
    folder = eval_set(tmp_path / "Photos")
    assert run("eval", folder, "-q", "--json", tmp_path / "e.json").exit_code == 0
    protocol = json.loads((tmp_path / "e.json").read_text())["protocol"]
    assert protocol["device"] == "cpu" and protocol["precision"] == "fp32"
    assert protocol["models"] == [{"name": "ribsr-s-x2", "scale": 2, "sha256": sha256(X2_WEIGHTS),
                                   "source": "shipped"}]


# ---- 13: tests that need the benchmark data say where they looked --------------------------------


def test_missing_shared_data_is_explained_once(tmp_path: Path) -> None:
    env = {**os.environ, "RIBSR_SHARED": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_eval.py"), "-k", "set14 or set5"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("RIBSR_SHARED=") == 1 and str(tmp_path / "nowhere") in out and "skipped" in out
