"""DDP training on two gloo processes (CPU): the lines a multi-GPU run takes, NCCL aside.

Rank 1's clock is made to run 20x fast, as a rank that validated, was slowed
by a neighbour or started late would see it: rank 0 alone must decide when to
stop and which learning rate each step uses, or the ranks leave the loop at
different steps (the other one hangs in its all-reduce) with different rates.
Every rank draws the same global batch from one seeded stream and trains on its own
slice, so 2 processes follow the 1-process loss curve, and a resume continues it.

This file is also the worker: `python tests/test_ddp.py SPEC.json` runs one
rank (RANK/WORLD_SIZE/MASTER_* in the environment) and writes what it saw.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _worker(spec_path: str) -> None:
    """One rank: train as the spec says, recording the lr of every optimiser step, a digest of the batch slice
    it trained on, and the whole-batch loss of every step."""
    import numpy as np
    import torch

    from ribsr_cli.training import schedule, trainer

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    if rank == 1 and spec.get("fast_clock"):
        t0 = time.time()
        schedule.time = types.SimpleNamespace(time=lambda: t0 + spec["fast_clock"] * (time.time() - t0))
    seen: dict[str, list] = {"lr": [], "batch": [], "loss": []}
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen["lr"].append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    rank_share = trainer.rank_share

    if spec.get("float64"):  # model and batches in float64: see the loss-curve test
        torch.set_default_dtype(torch.float64)

    def recording_share(*args, **kwargs):
        lr, hr = rank_share(*args, **kwargs)
        seen["batch"].append(float(hr.double().mul(torch.arange(hr.numel()).view_as(hr) % 97).sum()))
        return (lr.double(), hr.double()) if spec.get("float64") else (lr, hr)

    torch.optim.AdamW.step = recording_step
    trainer.rank_share = recording_share
    cfg = trainer.TrainConfig(**spec["config"])
    trainer.train(cfg, resume=spec["resume"], log=lambda _: None, stop_at=spec.get("stop_at"), device="cpu",
                  on_step=lambda step, loss: seen["loss"].append(loss))
    Path(spec["report"].format(rank=rank)).write_text(json.dumps({**seen, "steps": len(seen["lr"]),
                                                                  "numpy_ok": bool(np.isfinite(seen["lr"]).all())}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp: Path, name: str, spec: dict, timeout: float = 90, world: int = 2) -> list[dict]:
    """All `world` ranks to completion (or killed at `timeout`, which fails the test); their reports, rank
    order. world=1 is the plain single-process run (no process group), for reference curves."""
    spec = {**spec, "report": str(tmp / f"{name}-rank{{rank}}.json")}
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__)), str(spec_path)], cwd=REPO,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: a rank did not finish in {timeout:.0f} s (hung in a collective?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"{name} rank {rank}:\n{out[-3000:]}"
    return [json.loads((tmp / f"{name}-rank{r}.json").read_text()) for r in range(world)]


def _config(out: Path, pool: Path, **kw) -> dict:
    return {"out_dir": str(out), "data_dir": str(pool), "val_dir": "", "patch": 12, "batch": 2, "warmup_steps": 2,
            "ckpt_minutes": 100, "arch": "ribsr-s", "scale": 2, **kw}


@pytest.mark.slow
def test_rank_zero_decides_stop_and_learning_rate_for_every_rank(tmp_path: Path, pool: Path) -> None:
    # time-boxed (schedule follows the clock), 3 s; rank 1's clock runs 20x fast
    cfg = _config(tmp_path / "run", pool, total_steps=0, max_minutes=0.05)
    rank0, rank1 = _run_two_ranks(tmp_path, "clock", {"config": cfg, "resume": False, "fast_clock": 20})
    assert rank0["steps"] == rank1["steps"] >= 3
    assert rank0["lr"] == rank1["lr"]
    assert rank0["lr"][-1] < rank0["lr"][1]  # the cosine did follow rank 0's clock down
    assert rank0["batch"] != rank1["batch"]  # each rank its own slice of the global batch


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve_and_a_resume_continues_it(tmp_path: Path,
                                                                                    pool: Path) -> None:
    """Global batch 4: one process trains on all 4 crops, each of 2 ranks on 2 of the same 4. DDP's gradient
    average then equals the 1-process gradient up to summation order (hence 1e-4, not equality).

    In float64: in float32 that order alone changes gradients by ~5e-8 absolute, and AdamW's first steps
    divide each gradient by its own size (+1e-8), so the thousands of parameters whose gradient is that
    small get noise-driven updates, and the curves part by ~1e-3 within 3 steps, whatever the split. In
    float64 the noise is 1e-9 times smaller, and a wrong split (other crops, a sum instead of a mean, a
    stale stream after the resume) still shows at once."""
    steps = 20
    single = _config(tmp_path / "single", pool, total_steps=steps, batch=4, patch=8, warmup_steps=4)
    (one,) = _run_two_ranks(tmp_path, "single", {"config": single, "resume": False, "float64": True}, world=1)
    ddp = {**single, "out_dir": str(tmp_path / "ddp")}
    rank0, rank1 = _run_two_ranks(tmp_path, "ddp", {"config": ddp, "resume": False, "float64": True})
    assert len(one["loss"]) == len(rank0["loss"]) == steps
    assert rank0["loss"] == rank1["loss"]  # every rank logs the whole batch's loss
    assert rank0["batch"] != rank1["batch"]
    curve, reference = np.array(rank0["loss"]), np.array(one["loss"])
    assert np.allclose(curve, reference, rtol=1e-4, atol=0), np.abs(curve / reference - 1).max()
    print(f"2 ranks vs 1 process: max relative loss difference {np.abs(curve / reference - 1).max():.1e}")
    assert reference[-5:].mean() < reference[:5].mean()  # it did learn: the curve is not flat noise

    resumed = {**single, "out_dir": str(tmp_path / "resumed")}
    first, _ = _run_two_ranks(tmp_path, "first-half", {"config": resumed, "resume": False, "stop_at": steps // 2,
                                                       "float64": True})
    second, _ = _run_two_ranks(tmp_path, "second-half", {"config": resumed, "resume": True, "float64": True})
    joined = np.array(first["loss"] + second["loss"])
    assert len(first["loss"]) == len(second["loss"]) == steps // 2
    assert np.allclose(joined, reference, rtol=1e-4, atol=0), np.abs(joined / reference - 1).max()


@pytest.mark.slow
def test_each_rank_draws_its_own_batches_after_a_resume(tmp_path: Path, pool: Path) -> None:
    cfg = _config(tmp_path / "run", pool, total_steps=5)
    _run_two_ranks(tmp_path, "first", {"config": cfg, "resume": False, "stop_at": 2})
    rank0, rank1 = _run_two_ranks(tmp_path, "resumed", {"config": cfg, "resume": True})
    assert rank0["steps"] == rank1["steps"] == 3
    assert len(set(rank0["batch"]) & set(rank1["batch"])) == 0
    assert rank0["lr"] == rank1["lr"]


if __name__ == "__main__":
    _worker(sys.argv[1])


@pytest.mark.slow
def test_two_processes_told_the_regions_damage_follow_the_one_process_curve(tmp_path: Path, pool: Path) -> None:
    """`--damage-told context` under DDP: each rank is told its estimator's reading of its own share of the
    128-px regions (`rank_slice`), so 2 ranks follow the 1-process curve as in the plain case (float64, see
    there). Another rank's regions, or the whole batch's, would part the curves or fail on the shapes."""
    estimator = REPO / "runs" / "damage-estimator-x2-v5" / "estimator.safetensors"
    if not estimator.is_file():
        import torch
        from safetensors.torch import save_file

        from ribsr_cli.engine.damage import DamageEstimator

        torch.manual_seed(5)
        estimator = tmp_path / "estimator.safetensors"
        save_file(DamageEstimator().state_dict(), str(estimator))
    steps = 6
    single = _config(tmp_path / "single", pool, total_steps=steps, batch=4, patch=8, warmup_steps=2,
                     arch="ribsr-sd", degradation="real", degradation_overrides={"camera_prob": 1.0},
                     damage_estimator=str(estimator), damage_told="context")
    (one,) = _run_two_ranks(tmp_path, "single-context", {"config": single, "resume": False, "float64": True},
                            world=1)
    ddp = {**single, "out_dir": str(tmp_path / "ddp")}
    rank0, rank1 = _run_two_ranks(tmp_path, "ddp-context", {"config": ddp, "resume": False, "float64": True})
    assert len(one["loss"]) == len(rank0["loss"]) == steps and rank0["loss"] == rank1["loss"]
    curve, reference = np.array(rank0["loss"]), np.array(one["loss"])
    assert np.allclose(curve, reference, rtol=1e-4, atol=0), np.abs(curve / reference - 1).max()
