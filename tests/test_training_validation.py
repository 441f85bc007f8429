"""Validation during training is the eval protocol: the PSNR-Y a run logs is what `ribsr eval` reports.

A real (tiny) run from the shipped ×2 weights writes its Set5 score to log.csv; `ribsr eval` on the run's
ema.safetensors must give the same number, for the clean protocol and for `--degradation real` /
`eval --degrade real`. Grey images (Set14's bridge) stay grey in both, and the validation set is found,
or refused in one line, the way the rest of ribsr finds and refuses folders.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import BENCHMARKS, REPO
from ribsr_cli.cli import app
from ribsr_cli.engine.checkpoint import load_model
from ribsr_cli.errors import UsageError
from ribsr_cli.training.config import TrainConfig
from ribsr_cli.training.trainer import train
from ribsr_cli.training.validation import load_validation, validate

SHIPPED_X2 = REPO / "weights" / "ribsr-s-x2.safetensors"
# log.csv keeps 3 decimals; the same computation can differ from eval's only by that rounding
LOG_ROUNDING_DB = 0.0005


@pytest.fixture(scope="module", autouse=True)
def restore_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # train() sets the run's thread count for the whole process


def _eval_psnr(dataset: Path, model: Path, tmp: Path, *extra: str) -> float:
    """`ribsr eval DATASET -s 2 -m MODEL --json` → the model's mean PSNR-Y."""
    out = tmp / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(dataset), "-s", "2", "-m", str(model), "--json", str(out),
                                      "--quiet", *extra])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(out.read_text())["results"] if r["method"] != "bicubic"]
    assert len(rows) == 1 and rows[0]["scale"] == 2
    return rows[0]["psnr_y"]


@pytest.mark.parametrize("degradation, eval_flags", [("bicubic", ()), ("real", ("--degrade", "real"))])
def test_logged_validation_is_what_ribsr_eval_reports(tmp_path: Path, pool: Path, degradation: str,
                                                      eval_flags: tuple[str, ...]) -> None:
    if not (BENCHMARKS / "Set5").is_dir():
        pytest.skip(f"benchmark images not found at {BENCHMARKS}")
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), data_dir=str(pool), val_dir=str(BENCHMARKS / "Set5"),
                      init_from=str(SHIPPED_X2), total_steps=1, warmup_steps=1, lr=1e-4, batch=2, patch=24,
                      threads=1, ckpt_minutes=100, degradation=degradation)
    run = train(cfg, resume=False, log=lambda _: None, device="cpu")
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1"] and rows[0]["val_psnr_y"]  # validated at the last step
    logged = float(rows[0]["val_psnr_y"])

    reported = _eval_psnr(BENCHMARKS / "Set5", run / "ema.safetensors", tmp_path, *eval_flags)
    assert abs(reported - logged) <= LOG_ROUNDING_DB, (reported, logged)
    # the step moved the weights: eval scored the run's file, not the shipped one it started from
    trained, shipped = load_model(run / "ema.safetensors").state_dict(), load_model(SHIPPED_X2).state_dict()
    assert any(not torch.equal(trained[k], shipped[k]) for k in shipped)


def test_grey_images_are_validated_grey_as_eval_scores_them(tmp_path: Path) -> None:
    """Set14's bridge is greyscale: eval scores it grey (its official LR file too); validation must as well."""
    bridge = BENCHMARKS / "Set14" / "HR" / "bridge.png"
    if not bridge.is_file():
        pytest.skip(f"benchmark images not found at {BENCHMARKS}")
    grey_set = tmp_path / "GreySet"
    (grey_set / "HR").mkdir(parents=True)
    (grey_set / "LR_bicubic" / "X2").mkdir(parents=True)
    shutil.copy(bridge, grey_set / "HR")
    shutil.copy(BENCHMARKS / "Set14" / "LR_bicubic" / "X2" / "bridgex2.png", grey_set / "LR_bicubic" / "X2")

    pairs = load_validation(grey_set, 2)
    [(name, lr, hr)] = pairs
    assert name == "bridge" and lr.ndim == hr.ndim == 2
    score = validate(load_model(SHIPPED_X2), pairs, 2, "cpu")
    assert score == pytest.approx(_eval_psnr(grey_set, SHIPPED_X2, tmp_path), abs=1e-6)


def test_val_default_is_set5_of_the_shared_benchmarks_resolved_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RIBSR_SHARED", str(tmp_path / "shared"))
    monkeypatch.chdir(tmp_path)  # not relative to the working directory
    cfg = TrainConfig()
    assert cfg.val_dir == str(tmp_path / "shared" / "benchmarks" / "Set5")
    monkeypatch.setenv("RIBSR_SHARED", str(tmp_path / "moved"))
    assert cfg.val_dir == str(tmp_path / "shared" / "benchmarks" / "Set5")  # resolved once, at construction
    assert TrainConfig(val_dir="my/set").val_dir == "my/set" and TrainConfig(val_dir="").val_dir == ""


def test_a_missing_validation_folder_is_one_line_before_training(tmp_path: Path, pool: Path) -> None:
    missing = tmp_path / "no-such-set"
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--data", str(pool),
                                      "--val", str(missing), "--steps", "1", "--warmup", "1"])
    assert result.exit_code == 2, result.output
    assert f"error: {missing}: no such folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before the first step
    empty = tmp_path / "empty-set"
    empty.mkdir()
    with pytest.raises(UsageError, match="no images found"):  # eval's own refusal, a usage error
        load_validation(empty, 2)


def test_the_best_validated_ema_is_kept_and_exported(tmp_path: Path, pool: Path) -> None:
    """best.safetensors holds the EMA of the best logged validation; eval of it gives that score; a resumed run
    keeps competing with it; export ships it unless told `last`."""
    from ribsr_cli.training.checkpointing import BEST_FILE, EMA_FILE, best_score
    from ribsr_cli.training.export import pick_checkpoint

    if not (BENCHMARKS / "Set5").is_dir():
        pytest.skip(f"benchmark images not found at {BENCHMARKS}")
    small = tmp_path / "Set2"  # two Set5 images keep four validations quick
    (small / "HR").mkdir(parents=True)
    (small / "LR_bicubic" / "X2").mkdir(parents=True)
    for stem in ("bird", "butterfly"):
        shutil.copy(BENCHMARKS / "Set5" / "HR" / f"{stem}.png", small / "HR")
        shutil.copy(BENCHMARKS / "Set5" / "LR_bicubic" / "X2" / f"{stem}x2.png", small / "LR_bicubic" / "X2")
    # a large learning rate moves the validation score step by step, up or down; the EMA follows the model
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), data_dir=str(pool), val_dir=str(small), init_from=str(SHIPPED_X2),
                      total_steps=4, warmup_steps=10, lr=3e-3, batch=2, patch=24, threads=1, ckpt_minutes=100,
                      val_every=1)
    run = train(cfg, resume=False, log=lambda _: None, device="cpu", stop_at=2)
    first = [float(r["val_psnr_y"]) for r in csv.DictReader((run / "log.csv").open())]
    assert len(first) == 2 and best_score(run) == pytest.approx(max(first), abs=LOG_ROUNDING_DB)

    train(cfg, resume=True, log=lambda _: None, device="cpu")  # steps 3-4 against the stored best
    logged = [float(r["val_psnr_y"]) for r in csv.DictReader((run / "log.csv").open())]
    assert len(logged) == 4
    assert best_score(run) == pytest.approx(max(logged), abs=LOG_ROUNDING_DB)
    reported = _eval_psnr(small, run / BEST_FILE, tmp_path)
    assert abs(reported - max(logged)) <= LOG_ROUNDING_DB, (reported, logged)

    assert pick_checkpoint(run) == run / BEST_FILE and pick_checkpoint(run, "last") == run / EMA_FILE
    (run / BEST_FILE).unlink()
    assert pick_checkpoint(run) == run / EMA_FILE  # runs from before 0.4.0 have no best file
