"""Training loop for RIB-SR models: resumable, seeded, time-boxed, CPU or (DDP) GPU.

One step: random HR crops from the prepared photo pool -> flips / 90-degree rotations -> LR made on the
fly (`batches`) -> L1 loss -> AdamW with warm-up then cosine decay (`schedule`) -> gradient clipping ->
EMA update. Everything needed to continue is checkpointed every few minutes, atomically (`checkpointing`),
so a run killed at any moment resumes where it stopped; the EMA is validated with the `ribsr eval`
protocol (`validation`). This module wires those together; each of them holds one part of the run.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.engine import build_model, configure_attention
from ribsr_cli.engine.runtime import pick_memory_format
from ribsr_cli.engine.damage import ESTIMATE_CROP
from ribsr_cli.training.batches import make_batch_in_context, make_batch_with_damage
from ribsr_cli.training.checkpointing import (STATE_FILE, best_score, init_body_from, load_training_state,
                                              restore_training_state, save_best, save_checkpoint)
from ribsr_cli.training.config import TrainConfig, architecture
from ribsr_cli.training.ddp import (agree_across_ranks, global_mean, join_process_group, launched_by_torchrun,
                                    leave_process_group, rank_share, rank_slice, training_device, wrap)
from ribsr_cli.training.runlog import RunLog
from ribsr_cli.training.schedule import RunClock, StepSchedule, ema_update
from ribsr_cli.training.stopping import StopRequest, TrainingInterrupted
from ribsr_cli.training.validation import Pair, eval_upscaler, load_validation, score_pairs
from ribsr_cli.fileutil import atomic_write_text


def training_autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The context every training step runs under, as the runtime policy decides it
    (`runtime.pick_training_dtype`, `runtime.training_context`): bf16 autocast on CUDA from sm80 and on CPUs
    with native bf16, fp32 elsewhere. `precision` is auto or fp32."""
    from ribsr_cli.engine.runtime import pick_training_dtype, training_context

    return training_context(device, pick_training_dtype(precision, device))


def _build(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer,
                                                            np.random.Generator]:
    """(model, EMA, optimiser, the numpy stream that draws the batches), all from the run's seed."""
    arch = architecture(cfg)
    rng = np.random.default_rng(cfg.seed)  # one stream on every rank: each takes its slice of the same batch
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # before building: the initial weights are part of the run's reproducibility
    layout = pick_memory_format(device)  # the inference layout policy: channels-last on a CPU (1.1x a step there)
    model = build_model(arch).to(device).use_memory_format(layout)
    configure_attention(model, strategy=cfg.attention_strategy)
    ema = build_model(arch).to(device).use_memory_format(layout)
    if arch.damage_channels:  # the damage estimator is trained on its own (training.damage_estimator), then frozen
        model.estimator.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    return model, ema, opt, rng


def _start_or_resume(cfg: TrainConfig, out: Path, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                     rng: np.random.Generator, resume: bool, log: Callable[[str], None]) -> tuple[int, float]:
    """(step, training seconds so far): from `last.pt` when resuming one, else a fresh start (from
    `init_from`'s matching tensors, or as near-plain upsampling) with the EMA equal to the model."""
    ckpt_path = out / STATE_FILE
    step, seconds_before = 0, 0.0
    if resume and ckpt_path.is_file():
        state = load_training_state(ckpt_path)
        restore_training_state(state, model, ema, opt, rng)
        step, seconds_before = state["step"], state["elapsed"]
        started_cfg = json.loads(state.get("config") or "{}")  # the TrainConfig the run started with
        _keep_started_overrides(cfg, started_cfg, out)
        _keep_started_choices(cfg, started_cfg, out)
        if not cfg.total_steps:
            cfg.total_steps = int(state.get("total_steps", 0))
            cfg.extra["time_fitted"] = bool(state.get("time_fitted", False))
        log(f"resumed {ckpt_path} at step {step} ({seconds_before / 60:.1f} min trained)")
    else:
        carried_estimator = False
        if cfg.init_from:
            skipped = init_body_from(model, cfg.init_from)
            carried_estimator = not any(k.startswith("estimator.") for k in skipped)
            if cfg.damage_estimator:
                skipped = [k for k in skipped if not k.startswith("estimator.")]
            log(f"initialised from {cfg.init_from}; fresh: {', '.join(skipped) or 'nothing'}")
        else:  # start as (almost) plain upsampling: a small residual on the skip path
            with torch.no_grad():
                for name, p in model.upsampler.named_parameters():
                    if name.startswith(("up_conv", "final_conv")):
                        p.mul_(0.1)
        if model.config.damage_channels:
            _load_estimator(cfg, model, carried_estimator)
        ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    ema.eval()
    return step, seconds_before


def _jittered(damage: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """The damage vectors a conditioned network is told in training: the true ones plus Gaussian jitter of
    `cfg.damage_jitter` per component, at least 0 (drawn from the run's one numpy stream, which the checkpoint
    saves)."""
    noise = torch.from_numpy(rng.standard_normal(tuple(damage.shape))).float()
    return (damage + torch.tensor(cfg.damage_jitter, dtype=torch.float32) * noise).clamp_min(0.0)


def _load_estimator(cfg: TrainConfig, model: nn.Module, carried: bool) -> None:
    """Put the trained damage estimator into a fresh damage-conditioned run's network; without one (and no
    `init_from` that `carried` one) the network would be told noise at validation, so it is refused."""
    from ribsr_cli.engine.checkpoint import read_state_dict

    if not cfg.damage_estimator:
        if carried:
            return
        raise ValueError(f"{cfg.arch} is damage-conditioned: give --damage-estimator FILE "
                         "(python3 -m ribsr_cli.training.damage_estimator trains one)")
    state, _ = read_state_dict(cfg.damage_estimator)
    model.estimator.load_state_dict(state)


def _keep_started_overrides(cfg: TrainConfig, started_cfg: dict, run: Path) -> None:
    """A resumed run keeps the degradation overrides it started with (a plain resume command need not repeat
    the file); different ones are refused, because half a run on other ranges is neither run. A run started
    before `--degradation-config` existed recorded only its resolved ranges: given overrides must agree with
    every range it recorded (fields added since were not part of it)."""
    from ribsr_cli.training.degrade import degradation_config

    if "degradation_overrides" not in started_cfg:
        recorded = started_cfg.get("extra", {}).get("degradation_config", {})
        wanted = json.loads(json.dumps(asdict(degradation_config(cfg.degradation_overrides))))  # tuples as lists
        differ = sorted(k for k, v in recorded.items() if k in wanted and wanted[k] != v)
        if cfg.degradation_overrides and differ:
            raise ValueError(f"{run}: the run started with other degradation settings ({', '.join(differ)}); "
                             "resume without --degradation-config, or --restart")
        return
    started = started_cfg["degradation_overrides"]
    if cfg.degradation_overrides and cfg.degradation_overrides != started:
        raise ValueError(f"{run}: the run started with other degradation settings ({started or 'the defaults'}); "
                         "resume without --degradation-config, or --restart")
    cfg.degradation_overrides = dict(started)


def _keep_started_choices(cfg: TrainConfig, started_cfg: dict, run: Path) -> None:
    """A resumed run keeps the crop bias (`--patch-detail`) and what its network is told (`--damage-told`) it
    started with; a different one given is refused for the reason `_keep_started_overrides` gives. Its damage
    estimator is the one its checkpoint carries (the one it started with, or one `damage_estimator.install`
    put in since): the path a resume command repeats is not recorded over it."""
    if started_cfg.get("damage_estimator"):
        cfg.damage_estimator = started_cfg["damage_estimator"]
    started = float(started_cfg.get("patch_detail", 0.0))
    if cfg.patch_detail and cfg.patch_detail != started:
        raise ValueError(f"{run}: the run started with --patch-detail {started:g}; resume without it, or --restart")
    cfg.patch_detail = started
    told = started_cfg.get("damage_told") or "truth"  # runs before 0.9.0 were told the truth
    if cfg.damage_told and cfg.damage_told != told:
        raise ValueError(f"{run}: the run started with --damage-told {told}; resume without it, or --restart")
    cfg.damage_told = told


def _optimise(net: nn.Module, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig,
              step: int, lr_batch: torch.Tensor, hr_batch: torch.Tensor, device: torch.device,
              autocast: torch.autocast, damage: torch.Tensor | None = None) -> torch.Tensor:
    """One optimiser step on this rank's slice: L1 under the training precision, clipping, AdamW, EMA.
    `damage`: the samples' damage vectors, for a damage-conditioned network. Returns this rank's loss."""
    with autocast:
        sr = net(lr_batch.to(device)) if damage is None else net(lr_batch.to(device), damage.to(device))
        loss = F.l1_loss(sr, hr_batch.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(ema, model, cfg.ema_decay if step > cfg.warmup_steps else 0.0)
    return loss


def train(cfg: TrainConfig, resume: bool = True, log: Callable[[str], None] = print,
          stop_at: int | None = None, device: torch.device | str | None = None,
          on_step: Callable[[int, float], None] | None = None) -> Path:
    """Run (or continue) training until total_steps or max_minutes (or step `stop_at`, as an interruption would).

    `device` defaults to cuda:LOCAL_RANK when CUDA is available, else the CPU; tests pass it so that the CPU
    runs the very lines a GPU run takes. Under torchrun (WORLD_SIZE > 1) it trains with DDP: NCCL on CUDA,
    gloo on the CPU. `--batch` is then the global batch: every rank draws it from the same seeded stream and
    trains on its own equal slice (rank_share), so the run follows the 1-process curve. `on_step(step, loss)`
    sees every step's whole-batch loss. Rank 0 alone validates, logs and checkpoints.
    """
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    distributed = launched_by_torchrun()
    device = training_device(device)
    rank, world = join_process_group(device, cfg.batch)
    try:
        interrupted = _train_joined(cfg, out, resume, log, stop_at, device, on_step, rank, world, distributed)
    except BaseException:
        leave_process_group(distributed, finished=False)
        raise
    leave_process_group(distributed)
    if interrupted is not None:
        raise interrupted
    return out


def _train_joined(cfg: TrainConfig, out: Path, resume: bool, log: Callable[[str], None], stop_at: int | None,
                  device: torch.device, on_step: Callable[[int, float], None] | None, rank: int, world: int,
                  distributed: bool) -> TrainingInterrupted | None:
    """`train`'s loop, on a rank that has joined its process group (rank 0 of 1 without torchrun). Returns the
    error a signal calls for rather than raising it, so that `train` leaves the group in step first."""
    from ribsr_cli.training.pool import HRPool

    model, ema, opt, rng = _build(cfg, device)
    step, seconds_before = _start_or_resume(cfg, out, model, ema, opt, rng, resume, log)
    net = wrap(model, device, distributed)

    pool = HRPool(cfg.data_dir)
    val_pairs: list[Pair] = (load_validation(cfg.val_dir, cfg.scale, cfg.degradation)
                             if rank == 0 and cfg.val_dir else [])
    val_upscaler = eval_upscaler(ema, device) if val_pairs else None  # once: the EMA changes in place
    ranges = None
    if cfg.degradation == "real":  # the ranges change between releases; the run records the ones it used
        from ribsr_cli.training.degrade import degradation_config
        ranges = degradation_config(cfg.degradation_overrides)
        cfg.extra["degradation_config"] = asdict(ranges)
    conditioned = bool(model.config.damage_channels)
    cfg.damage_told = cfg.damage_told or "truth"
    if cfg.damage_told != "truth" and not conditioned:
        raise ValueError(f"--damage-told {cfg.damage_told}: {cfg.arch} is not damage-conditioned (ribsr-sd is)")
    if conditioned and (ranges is None or ranges.camera_prob < 1):
        raise ValueError(f"{cfg.arch} is damage-conditioned: it trains on the camera model alone "
                         "(--degradation real with a --degradation-config that sets camera_prob 1)")
    if rank == 0:  # one writer per file
        atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    autocast = training_autocast(device, cfg.precision)
    clock = RunClock(seconds_before)
    schedule = StepSchedule(cfg, step, clock)
    report = RunLog(out, rank, step, cfg.total_steps, log)
    last_ckpt = clock.now()
    best = best_score(out) if step > 0 else None  # a resumed run competes with its own best; a fresh one starts over

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(out, cfg, model, ema, opt, rng, step=step, seconds=clock.seconds(),
                            time_fitted=schedule.time_fitted)

    model.train()
    with StopRequest() as stop:  # Ctrl-C / kill: finish the step, checkpoint below, then say so
        while True:
            # Under DDP only rank 0's clock counts: every rank stops at the same step with the same lr.
            halt, lr_now, schedule.end = agree_across_ranks(
                (rank == 0 and schedule.clock_says_stop(step, stop_at)) or stop.signal is not None,
                schedule.learning_rate(step), schedule.end, device, distributed)
            if halt:
                break
            for group in opt.param_groups:
                group["lr"] = lr_now
            if conditioned and cfg.damage_told == "context":
                lr_batch, hr_batch, context = make_batch_in_context(pool, rng, cfg.batch, cfg.patch, ESTIMATE_CROP,
                                                                    cfg.scale, ranges, cfg.patch_detail)
            else:
                lr_batch, hr_batch, damage = make_batch_with_damage(pool, rng, cfg.batch, cfg.patch, cfg.scale,
                                                                    cfg.degradation, ranges, cfg.patch_detail)
            lr_batch, hr_batch = rank_share(lr_batch, hr_batch, rank, world)
            if conditioned and cfg.damage_told != "truth":  # what the estimator reads, as at run time
                read = lr_batch if cfg.damage_told == "estimate" else rank_slice(context, rank, world)
                with torch.no_grad():
                    damage = model.estimator(read.to(device)).clamp_min(0.0)
            elif conditioned:
                damage = rank_slice(_jittered(damage, cfg, rng), rank, world)
            loss = _optimise(net, model, ema, opt, cfg, step, lr_batch, hr_batch, device, autocast,
                             damage if conditioned else None)
            step += 1
            schedule.recalibrate(step, log)
            loss_value = global_mean(loss, distributed)  # the whole batch's, not this rank's slice
            if on_step is not None:
                on_step(step, loss_value)
            report.step_done(loss_value)
            val = ""
            if val_pairs and (step % cfg.val_every == 0 or step == cfg.total_steps):
                score = score_pairs(val_upscaler, val_pairs, cfg.scale)
                val = f"{score:.3f}"
                report.validated(step, lr_now, val, clock.minutes(), cfg.total_steps)
                if best is None or score > best:
                    best = score
                    save_best(out, cfg, ema, step=step, seconds=clock.seconds(), val_psnr_y=score)
            report.row(step, lr_now, val, clock.minutes())
            if clock.now() - last_ckpt >= cfg.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = clock.now()
    checkpoint()
    report.close()
    log(f"stopped at step {step} after {clock.minutes():.1f} min; checkpoint {out / STATE_FILE}")
    return stop.interrupted(step) if stop.signal is not None else None
