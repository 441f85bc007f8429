"""The training loop: it learns, it resumes exactly, and ×3/×4 can start from a ×2 body."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import BENCHMARKS, REPO
from ribsr_cli.cli import app
from ribsr_cli.engine.checkpoint import load_model
from ribsr_cli.training.checkpointing import init_body_from
from ribsr_cli.training.config import TrainConfig
from ribsr_cli.training.schedule import learning_rate
from ribsr_cli.training.trainer import train


def _cfg(tmp: Path, pool: Path, steps: int, **kw) -> TrainConfig:
    val = BENCHMARKS / "Set5" if (BENCHMARKS / "Set5").is_dir() else ""
    return TrainConfig(out_dir=str(tmp), data_dir=str(pool), val_dir=str(val), total_steps=steps, warmup_steps=2,
                       val_every=1000, ckpt_minutes=100, patch=24, batch=2, **kw)


def _quiet(_: str) -> None:
    pass


def test_resume_continues_exactly(tmp_path: Path, pool: Path) -> None:
    straight = train(_cfg(tmp_path / "a", pool, 6), resume=False, log=_quiet)
    train(_cfg(tmp_path / "b", pool, 6), resume=False, log=_quiet, stop_at=3)  # interrupted at step 3
    resumed = train(_cfg(tmp_path / "b", pool, 6), resume=True, log=_quiet)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    lines = (resumed / "log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr,val_psnr_y,minutes"


def test_training_reduces_the_loss(tmp_path: Path, pool: Path) -> None:
    run = train(_cfg(tmp_path, pool, 60, lr=2e-3), resume=False, log=_quiet)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 60
    rows = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert float(rows[-1][1]) < 0.05  # L1 on [0,1] images: a working upsampler, far below an untrained net
    model = load_model(run / "ema.safetensors")
    assert model.scale == 2 and model.provenance["steps"] == 60


def test_larger_scale_starts_from_x2_body(tmp_path: Path, pool: Path) -> None:
    run = train(_cfg(tmp_path / "x2", pool, 2), resume=False, log=_quiet)
    from ribsr_cli.engine import build_model

    x4 = build_model("ribsr-s-x4")
    fresh = init_body_from(x4, str(run / "ema.safetensors"))
    assert fresh == ["upsampler.up_conv.bias", "upsampler.up_conv.weight"]
    x2 = load_model(run / "ema.safetensors")
    assert torch.equal(x4.state_dict()["body.0.0.attn.to_q"], x2.state_dict()["body.0.0.attn.to_q"])


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    lrs = [learning_rate(cfg, s) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[110] == pytest.approx(1e-5)


def test_readme_models_table_is_the_manifest(tmp_path: Path) -> None:
    """The README's scores are rendered from weights/MANIFEST.json, so the two cannot disagree."""
    import json

    from ribsr_cli.training.export import README_MARKERS, models_table, update_readme

    models = json.loads((REPO / "weights" / "MANIFEST.json").read_text())["models"]
    readme = (REPO / "README.md").read_text()
    start, end = README_MARKERS
    assert readme.split(start, 1)[1].split(end, 1)[0].strip() == models_table(models)
    for m in models:  # every shipped file is in the table with its measured Set5 score
        assert f"`{m['name']}`" in readme and f"{m['metrics']['Set5']['psnr_y']:.2f} /" in readme

    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{start}\nstale\n{end}\noutro\n")
    assert update_readme(copy, models)
    assert copy.read_text() == f"intro\n{start}\n{models_table(models)}\n{end}\noutro\n"
    copy.write_text("no markers\n")
    assert not update_readme(copy, models) and copy.read_text() == "no markers\n"


def test_time_boxed_schedule_follows_the_clock_not_the_step() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=0, max_minutes=60)
    fractions = [i / 20 for i in range(21)]
    lrs = [learning_rate(cfg, 500, f) for f in fractions]
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx((1e-3 + 1e-5) / 2) and lrs[20] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # the same moment gives the same rate whatever the step count (a slow stretch cannot shift the decay)
    assert learning_rate(cfg, 300, 0.4) == learning_rate(cfg, 30000, 0.4)
    assert learning_rate(cfg, 5, 0.9) == pytest.approx(6e-4)  # warm-up is still counted in steps
    assert learning_rate(cfg, 500, 1.7) == pytest.approx(1e-5)  # past the budget: the floor


def test_time_boxed_run_needs_a_budget_to_resume(tmp_path: Path, pool: Path) -> None:
    cfg = _cfg(tmp_path, pool, 0, max_minutes=0.05)
    train(cfg, resume=False, log=_quiet)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["time_fitted"] and state["step"] > 0
    with pytest.raises(ValueError, match="resumed time-boxed run needs --max-minutes"):
        train(_cfg(tmp_path, pool, 0), resume=True, log=_quiet)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_kill_checkpoints_the_step_in_progress(tmp_path: Path, pool: Path, monkeypatch, signum) -> None:
    """`ribsr train` stopped by Ctrl-C or `kill` saves the finished step, exits 130, and resumes exactly."""
    import ribsr_cli.training.trainer as trainer

    real = trainer.make_batch_with_damage
    calls = {"n": 0}

    def batch_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # arrives while step 3 is being computed
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIGINT: SIG_IGN in a background job
    straight = train(_cfg(tmp_path / "a", pool, 6), resume=False, log=_quiet)
    assert {s: signal.getsignal(s) for s in before} == before  # a finished run puts them back too
    monkeypatch.setattr(trainer, "make_batch_with_damage", batch_then_signal)
    argv = ["train", "--out", str(tmp_path / "b"), "--data", str(pool), "--val", "", "--steps", "6",
            "--warmup", "2", "--patch", "24", "--batch", "2", "--ckpt-minutes", "100", "--val-every", "1000"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Traceback" not in result.output
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3
    assert {s: signal.getsignal(s) for s in before} == before  # handlers are put back
    monkeypatch.setattr(trainer, "make_batch_with_damage", real)
    assert CliRunner().invoke(app, argv).exit_code == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_real_degradation_trains_from_the_clean_weights(tmp_path: Path, pool: Path) -> None:
    """`--degradation real`: seeded camera-like LR on 8-bit levels, a fine-tune that runs, validation on the recipe."""
    import json

    import numpy as np

    from ribsr_cli.imaging.resize import imresize
    from ribsr_cli.training.degrade import degrade_for_eval
    from ribsr_cli.training.pool import HRPool
    from ribsr_cli.training.batches import make_batch
    from ribsr_cli.training.validation import load_validation

    hr_pool = HRPool(pool)
    lr, hr = make_batch(hr_pool, np.random.default_rng(0), 2, 24, 2, "real")
    again, _ = make_batch(hr_pool, np.random.default_rng(0), 2, 24, 2, "real")
    assert lr.shape == (2, 3, 24, 24) and hr.shape == (2, 3, 48, 48) and torch.equal(lr, again)
    torch.testing.assert_close(lr * 255, (lr * 255).round(), atol=1e-4, rtol=0)  # stored like a file would be
    clean = imresize((hr * 255).round().to(torch.uint8), 0.5).float() / 255
    assert not torch.equal(lr, clean)
    with pytest.raises(ValueError, match="degradation must be one of"):
        make_batch(hr_pool, np.random.default_rng(0), 2, 24, 2, "gaussian")

    run = train(_cfg(tmp_path, pool, 2, degradation="real", init_from=str(REPO / "weights" / "ribsr-s-x2.safetensors")),
                resume=False, log=_quiet)
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    assert json.loads((run / "config.json").read_text())["degradation"] == "real"
    if (BENCHMARKS / "Set5").is_dir():  # monitoring scores the fixed recipe, not the official bicubic LR
        _, val_lr, val_hr = load_validation(str(BENCHMARKS / "Set5"), 2, "real")[0]
        assert np.array_equal(val_lr, degrade_for_eval(val_hr, 2))
        assert (run / "log.csv").read_text().splitlines()[-1].split(",")[3] != ""  # validated at the last step


def test_val_default_is_the_shared_folder_found_when_the_command_runs(tmp_path: Path, monkeypatch) -> None:
    """`ribsr train` without --val validates on <shared>/benchmarks/Set5 whatever the working directory,
    with $RIBSR_SHARED read at call time (the old default was ../shared relative to the current folder)."""
    import ribsr_cli.training.trainer as trainer

    seen: list[str] = []
    monkeypatch.setattr(trainer, "train", lambda cfg, resume, log: seen.append(cfg.val_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RIBSR_SHARED", str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert seen == [str(tmp_path / "elsewhere" / "benchmarks" / "Set5")]
    monkeypatch.delenv("RIBSR_SHARED")
    CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert Path(seen[1]) == REPO.parent / "shared" / "benchmarks" / "Set5"


def test_patch_detail_travels_with_the_run(tmp_path: Path, pool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--patch-detail`: reaches the batches, is recorded in the run, kept by a plain resume; a different value
    is refused in one line."""
    import json

    from ribsr_cli.training import trainer

    asked: list[float] = []
    real = trainer.make_batch_with_damage

    def recording(*args):
        asked.append(args[-1])  # detail_ref, the last positional argument
        return real(*args)
    monkeypatch.setattr(trainer, "make_batch_with_damage", recording)
    run = tmp_path / "run"
    base = ["train", "--out", str(run), "--data", str(pool), "--val", "", "--steps", "3", "--warmup", "1",
            "--patch", "16", "--batch", "2"]
    runner = CliRunner()
    first = runner.invoke(app, base + ["--patch-detail", "12"])
    assert first.exit_code == 0, first.output
    assert json.loads((run / "config.json").read_text())["patch_detail"] == 12.0
    assert asked == [12.0] * 3
    resumed = runner.invoke(app, [a if a != "3" else "4" for a in base])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "config.json").read_text())["patch_detail"] == 12.0
    assert asked == [12.0] * 4  # the resumed step too, though the command did not repeat the flag
    other = runner.invoke(app, [a if a != "3" else "5" for a in base] + ["--patch-detail", "20"])
    assert other.exit_code == 2 and "started with --patch-detail 12" in other.output, other.output
    assert "Traceback" not in other.output
    for bad in ("-1", "nan", "inf"):
        refused = runner.invoke(app, base + ["--patch-detail", bad, "--restart"])
        assert refused.exit_code == 2 and f"--patch-detail {float(bad)}: must be 0" in refused.output, refused.output


def test_degradation_config_file_changes_the_lr_and_travels_with_the_run(tmp_path: Path, pool: Path) -> None:
    """`--degradation-config`: the named fields replace the defaults in the batches, config.json records them,
    a plain resume keeps them, and other settings on resume or a typo are refused with one line."""
    import json

    import numpy as np

    from ribsr_cli.imaging.resize import imresize
    from ribsr_cli.training.batches import make_batch
    from ribsr_cli.training.degrade import degradation_config
    from ribsr_cli.training.pool import HRPool

    hr_pool = HRPool(pool)
    all_clean = degradation_config({"clean_prob": 1.0})
    lr, hr = make_batch(hr_pool, np.random.default_rng(3), 2, 24, 2, "real", all_clean)
    bicubic = imresize((hr * 255).round().to(torch.uint8), 0.5).float() / 255  # clean_prob 1: the benchmark LR
    torch.testing.assert_close(lr, bicubic, atol=0, rtol=0)
    default_lr, _ = make_batch(hr_pool, np.random.default_rng(3), 2, 24, 2, "real")
    assert not torch.equal(default_lr, lr)

    settings = tmp_path / "camera.json"
    settings.write_text(json.dumps({"camera_prob": 1.0, "camera_noise_sigma": [2, 3]}))
    run = tmp_path / "run"
    base = ["train", "--degradation", "real", "--out", str(run), "--data", str(pool), "--val", "", "--steps", "4",
            "--warmup", "1", "--patch", "24", "--batch", "2", "--init-from", str(REPO / "weights" / "ribsr-s-x2.safetensors")]
    runner = CliRunner()
    first = runner.invoke(app, base + ["--degradation-config", str(settings)])
    assert first.exit_code == 0, first.output
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["degradation_overrides"] == {"camera_prob": 1.0, "camera_noise_sigma": [2, 3]}
    assert recorded["extra"]["degradation_config"]["camera_prob"] == 1.0
    assert recorded["extra"]["degradation_config"]["camera_noise_sigma"] == [2.0, 3.0]

    resumed = runner.invoke(app, [a if a != "4" else "6" for a in base])  # no file: the run's own settings
    assert resumed.exit_code == 0, resumed.output
    again = json.loads((run / "config.json").read_text())
    assert again["degradation_overrides"] == recorded["degradation_overrides"]
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 6

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"camera_prob": 0.2}))
    refused = runner.invoke(app, base + ["--degradation-config", str(other)])
    assert refused.exit_code == 2 and "other degradation settings" in refused.output
    other.write_text(json.dumps({"camera_prb": 0.2}))
    typo = runner.invoke(app, base + ["--degradation-config", str(other), "--restart"])
    assert typo.exit_code == 2 and "unknown degradation setting 'camera_prb'" in typo.output

    # a run started before --degradation-config recorded only its resolved ranges (without the fields added
    # since): overrides that agree with them resume it, others are refused
    state = torch.load(run / "last.pt", weights_only=True)
    legacy = json.loads(state["config"])
    del legacy["degradation_overrides"]
    legacy["extra"]["degradation_config"] = {k: v for k, v in legacy["extra"]["degradation_config"].items()
                                             if not k.startswith("camera_")}
    torch.save(dict(state, config=json.dumps(legacy)), run / "last.pt")
    settings.write_text(json.dumps({"camera_prob": 0.0}))  # a field the old run did not record
    agreeing = runner.invoke(app, [a if a != "4" else "8" for a in base] + ["--degradation-config", str(settings)])
    assert agreeing.exit_code == 0, agreeing.output
    assert json.loads((run / "config.json").read_text())["degradation_overrides"] == {"camera_prob": 0.0}
    state = torch.load(run / "last.pt", weights_only=True)
    torch.save(dict(state, config=json.dumps(legacy)), run / "last.pt")
    other.write_text(json.dumps({"clean_prob": 0.5}))  # a range the old run recorded differently (0.2)
    refused = runner.invoke(app, [a if a != "4" else "10" for a in base] + ["--degradation-config", str(other)])
    assert refused.exit_code == 2 and "other degradation settings (clean_prob)" in refused.output
    not_real = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--degradation-config", str(settings)])
    assert not_real.exit_code == 2 and "needs --degradation real" in not_real.output


def test_batch_in_context_cuts_aligned_pairs_from_one_degraded_region(pool: Path) -> None:
    """`make_batch_in_context`: each LR patch is a window of its degraded region, its HR patch the HR that
    window was made from (checked against MATLAB bicubic on clean regions, away from the window's border where
    bicubic reads neighbours), seeded, and with a detail bias the patches hold more detail than without."""
    import numpy as np

    from ribsr_cli.imaging.resize import imresize
    from ribsr_cli.training.batches import make_batch_in_context
    from ribsr_cli.training.degrade import degradation_config
    from ribsr_cli.training.pool import HRPool, detail

    hr_pool = HRPool(pool)
    camera = degradation_config({"camera_prob": 1.0, "clean_prob": 0.0})
    lr, hr, context = make_batch_in_context(hr_pool, np.random.default_rng(1), 3, 20, 56, 2, camera)
    again = make_batch_in_context(hr_pool, np.random.default_rng(1), 3, 20, 56, 2, camera)
    assert lr.shape == (3, 3, 20, 20) and hr.shape == (3, 3, 40, 40) and context.shape == (3, 3, 56, 56)
    assert all(torch.equal(a, b) for a, b in zip((lr, hr, context), again))
    for patch, region in zip(lr, context):  # a window of its region, at some place
        windows = region.unfold(1, 20, 1).unfold(2, 20, 1)  # (3, 37, 37, 20, 20)
        assert (windows == patch[:, None, None]).all(dim=(0, 3, 4)).any()

    clean = degradation_config({"clean_prob": 1.0})
    lr, hr, context = make_batch_in_context(hr_pool, np.random.default_rng(2), 4, 20, 56, 2, clean)
    remade = imresize((hr * 255).round().to(torch.uint8), 0.5).float() / 255
    assert (remade - lr)[..., 3:-3, 3:-3].abs().max() <= 1.5 / 255

    def mean_detail(ref: float) -> float:
        _, hr, _ = make_batch_in_context(hr_pool, np.random.default_rng(3), 48, 20, 56, 2, clean, ref)
        return float(np.mean([detail((h.permute(1, 2, 0) * 255).numpy()) for h in hr]))
    assert mean_detail(40.0) > 1.2 * mean_detail(0.0)
    with pytest.raises(ValueError, match="must be at least the patch"):
        make_batch_in_context(hr_pool, np.random.default_rng(0), 1, 64, 56, 2, clean)
