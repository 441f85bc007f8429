"""Training loop for RIB-SR models: resumable, seeded, time-boxed, CPU or (DDP) GPU.

One step: random HR crops from the prepared photo pool -> flips / 90-degree
rotations -> LR made on the fly with the MATLAB-compatible bicubic (the same
degradation `ribsr eval` scores against; or, with degradation "real", the seeded
camera-like pipeline of training/degrade.py) -> L1 loss -> AdamW with warm-up then
cosine decay -> gradient clipping -> EMA update. Everything needed to continue
(model, EMA, optimiser, step, RNG states) is checkpointed every few minutes,
atomically, so a run killed at any moment resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ribsr_cli.engine import build_model, configure_attention
from ribsr_cli.engine.presets import FAMILIES, get_preset
from ribsr_cli.engine.checkpoint import read_state_dict, save_model


@dataclass
class TrainConfig:
    arch: str = "ribsr-s"
    scale: int = 2
    out_dir: str = "runs/ribsr-s-x2"
    data_dir: str = "data/prepared"
    val_dir: str = "../shared/benchmarks/Set5"
    patch: int = 48  # LR patch side
    batch: int = 8
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    total_steps: int = 20000  # length of the cosine schedule; 0 = the cosine follows the max_minutes clock
    max_minutes: float = 0.0  # 0 = no time limit
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    val_every: int = 500
    ckpt_minutes: float = 3.0
    threads: int = 1
    init_from: str = ""  # a checkpoint whose body starts this run (e.g. x2 body for x3/x4)
    attention_strategy: str = "concat"
    precision: str = "auto"  # "auto": bf16 autocast on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16); "fp32"
    degradation: str = "bicubic"  # "real": LR from training.degrade's camera-like pipeline (blur, noise, JPEG)
    extra: dict[str, Any] = field(default_factory=dict)


def training_autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """Mixed precision for training steps, the inference policy's (`inference.pick_dtype`) applied to
    training: bf16 autocast on CUDA from sm80 and on CPUs with native bf16 (1.5-2x faster steps there), fp32 on
    other CPUs, where emulated bf16 is slower. fp16 is not offered: it would need loss scaling."""
    from ribsr_cli.engine.runtime import pick_dtype

    if precision not in ("auto", "fp32"):
        raise ValueError(f"training precision {precision!r}: use auto or fp32")
    # the inference policy decides; where it would pick fp16 (CUDA before sm80) training stays fp32
    bf16 = precision == "auto" and pick_dtype("auto", device) == torch.bfloat16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# ---- data -------------------------------------------------------------------

def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and 0-3 quarter turns (the 8 dihedral symmetries)."""
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.rot90(crop, int(rng.integers(4)))


def make_batch(pool, rng: np.random.Generator, batch: int, patch: int, scale: int,
               degradation: str = "bicubic") -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, hr) float batches in [0, 1]; LR = MATLAB bicubic of the uint8 HR crop, rounded to uint8, or with
    degradation "real" the seeded camera-like pipeline of training.degrade, also stored on uint8 levels."""
    from ribsr_cli.imaging.resize import imresize
    from ribsr_cli.training.degrade import DEGRADATIONS, degrade_batch

    if degradation not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    crops = [np.ascontiguousarray(augment(pool.random_crop(rng, patch * scale), rng)) for _ in range(batch)]
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()  # uint8 (B,3,H,W)
    lr = degrade_batch(hr, scale, rng) if degradation == "real" else imresize(hr, 1.0 / scale)
    return lr.float() / 255.0, hr.float() / 255.0


# ---- schedule / EMA ------------------------------------------------------------

def learning_rate(cfg: TrainConfig, step: int, time_fraction: float | None = None) -> float:
    """Linear warm-up over steps, then cosine from lr to min_lr.

    A time-boxed run passes the fraction of its minutes budget spent: its decay then follows the clock, so
    a slow stretch (another job sharing the CPU) cannot pull the schedule forward and push it back later,
    as a cosine over a step count re-estimated from the current speed would.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if time_fraction is None:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    else:
        progress = min(1.0, max(0.0, time_fraction))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    e = list(ema.state_dict().values())
    m = list(model.state_dict().values())
    torch._foreach_lerp_(e, m, 1.0 - decay)


# ---- validation -----------------------------------------------------------------

def load_validation(val_dir: str, scale: int, degrade: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, lr, hr) uint8 pairs of a benchmark set, LR from the official files or made by ribsr.

    degrade=True: LR from training.degrade.degrade_for_eval (the fixed real-photo recipe `ribsr eval
    --degrade real` scores), so a run trained on real degradations is monitored on what it learns.
    """
    from ribsr_cli.imaging.resize import bicubic_degrade, modcrop
    from ribsr_cli.training.degrade import degrade_for_eval
    from PIL import Image

    root = Path(val_dir)
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    pairs = []
    for path in sorted(hr_dir.glob("*.png")):
        hr = modcrop(np.asarray(Image.open(path).convert("RGB")), scale)
        official = root / "LR_bicubic" / f"X{scale}" / f"{path.stem}x{scale}.png"
        if degrade:
            lr = degrade_for_eval(hr, scale)
        else:
            lr = np.asarray(Image.open(official).convert("RGB")) if official.is_file() else bicubic_degrade(hr, scale)
        pairs.append((path.stem, lr, hr))
    return pairs


@torch.no_grad()
def validate(model: nn.Module, pairs, scale: int, device: torch.device | str | None = None) -> float:
    """Mean PSNR-Y over (name, lr, hr) uint8 pairs. Each LR goes to `device` (default: the model's) and the
    SR comes back to the CPU for scoring: the same lines run for a CPU and a CUDA model."""
    from ribsr_cli.imaging.metrics import psnr

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    scores = []
    for _, lr, hr in pairs:
        x = (torch.from_numpy(np.array(lr)).permute(2, 0, 1)[None].float() / 255.0).to(device)
        sr = model(x).clamp(0, 1)[0].permute(1, 2, 0).mul(255).round().byte().cpu().numpy()
        scores.append(psnr(sr, hr, crop_border=scale, test_y=True))
    return float(np.mean(scores))


# ---- checkpoints ----------------------------------------------------------------

def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"numpy": json.dumps(rng.bit_generator.state), "python": json.dumps(random.getstate()),
            "torch": torch.get_rng_state()}


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])


def load_training_state(path: Path) -> dict[str, Any]:
    """A `last.pt` with every tensor on the CPU, whichever device saved it: `load_state_dict` copies weights
    and optimiser moments to the model's device by itself, while the RNG states must stay CPU ByteTensors
    (`torch.set_rng_state` rejects a CUDA tensor, so `map_location=<cuda device>` broke every GPU resume)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_training_state(state: dict[str, Any], model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                           rng: np.random.Generator) -> None:
    """Weights, EMA, optimiser and RNG states from `load_training_state`, onto a model on any device."""
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    _set_rng_state(rng, state["rng"])


def rank_share(lr: torch.Tensor, hr: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s contiguous slice of a global (lr, hr) batch that every rank drew from the same seeded
    stream. With equal slices, DDP's gradient average equals the gradient of the mean L1 over the whole
    batch (the model has no BatchNorm), so N processes follow the 1-process run's curve step for step; and
    a checkpoint holds the one stream every rank resumes from."""
    if world == 1:
        return lr, hr
    share = lr.shape[0] // world
    return lr[rank * share:(rank + 1) * share], hr[rank * share:(rank + 1) * share]


def global_mean(value: torch.Tensor, distributed: bool) -> float:
    """The mean of a per-rank scalar over all ranks (the whole batch's loss, for the log); as is without DDP."""
    if not distributed:
        return value.item()
    total = value.detach().double().reshape(1).clone()
    torch.distributed.all_reduce(total)
    return float(total) / torch.distributed.get_world_size()


def agree_across_ranks(stop: bool, lr: float, schedule_end: int, device: torch.device,
                       distributed: bool) -> tuple[bool, float, int]:
    """(stop, lr, schedule end) every rank uses for the next step: rank 0's learning rate and schedule (its
    clock alone counts, validation time included), and a stop when any rank asks (rank 0's clock or step
    limit, a signal anywhere). All ranks thus leave the loop at the same step; none waits in an all-reduce.

    One MAX all-reduce: ranks other than 0 send -1 for lr and schedule end, which never win."""
    if not distributed:
        return stop, lr, schedule_end
    leader = torch.distributed.get_rank() == 0
    t = torch.tensor([float(stop), lr if leader else -1.0, float(schedule_end) if leader else -1.0],
                     dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    stop_all, lr_all, end_all = t.tolist()
    return stop_all > 0, lr_all, int(end_all)


def init_body_from(model: nn.Module, path: str) -> list[str]:
    """Copy every tensor whose name and shape match (the body of a x2 model into x3/x4); returns skipped keys."""
    state, _ = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


# ---- the loop -------------------------------------------------------------------

class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run after the step in progress; the checkpoint is saved."""


class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop reads between steps, so a stop never lands mid-step and always
    ends in a checkpoint (`kill` of a nohup'ed run included). A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C is a plain KeyboardInterrupt

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, resume: bool = True, log: Callable[[str], None] = print,
          stop_at: int | None = None, device: torch.device | str | None = None,
          on_step: Callable[[int, float], None] | None = None) -> Path:
    """Run (or continue) training until total_steps or max_minutes (or step `stop_at`, as an interruption would).

    `device` defaults to cuda:LOCAL_RANK when CUDA is available, else the CPU; tests pass it so that the CPU
    runs the very lines a GPU run takes. Under torchrun (WORLD_SIZE > 1) it trains with DDP: NCCL on CUDA,
    gloo on the CPU. `--batch` is then the global batch: every rank draws it from the same seeded stream and
    trains on its own equal slice (rank_share), so the run follows the 1-process curve. `on_step(step, loss)`
    sees every step's whole-batch loss.
    """
    from ribsr_cli.training.pool import HRPool

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "last.pt"
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    rank, world = 0, 1
    if ddp:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL init, or every rank's communicator lands on GPU 0
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if cfg.batch % world:
            torch.distributed.destroy_process_group()
            raise ValueError(f"--batch {cfg.batch} is the global batch: it must be a multiple of the "
                             f"{world} processes")

    if isinstance(cfg.arch, str) and cfg.arch in FAMILIES:
        arch = get_preset(cfg.arch, cfg.scale)
    else:
        arch = dict(build_model(cfg.arch).arch) if isinstance(cfg.arch, str) else dict(cfg.arch)
        arch["upscaling_factor"] = cfg.scale
    rng = np.random.default_rng(cfg.seed)  # one stream on every rank: each takes its slice of the same batch
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # before building: the initial weights are part of the run's reproducibility
    model = build_model(arch).to(device)
    configure_attention(model, strategy=cfg.attention_strategy)
    ema = build_model(arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    step, elapsed_before = 0, 0.0
    if resume and ckpt_path.is_file():
        state = load_training_state(ckpt_path)
        restore_training_state(state, model, ema, opt, rng)
        step, elapsed_before = state["step"], state["elapsed"]
        if not cfg.total_steps:
            cfg.total_steps = int(state.get("total_steps", 0))
            cfg.extra["time_fitted"] = bool(state.get("time_fitted", False))
        log(f"resumed {ckpt_path} at step {step} ({elapsed_before / 60:.1f} min trained)")
    else:
        if cfg.init_from:
            skipped = init_body_from(model, cfg.init_from)
            log(f"initialised from {cfg.init_from}; fresh: {', '.join(skipped) or 'nothing'}")
        if not cfg.init_from:  # start as (almost) plain upsampling: a small residual on the skip path
            with torch.no_grad():
                for name, p in model.upsampler.named_parameters():
                    if name.startswith(("up_conv", "final_conv")):
                        p.mul_(0.1)
        ema.load_state_dict(model.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    ema.eval()
    net: nn.Module = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None) if ddp else model)

    pool = HRPool(cfg.data_dir)
    val_pairs = (load_validation(cfg.val_dir, cfg.scale, degrade=cfg.degradation == "real")
                 if rank == 0 and cfg.val_dir else [])
    if cfg.degradation == "real":  # the ranges change between releases; the run records the ones it used
        from ribsr_cli.training.degrade import DEFAULT_CONFIG
        cfg.extra["degradation_config"] = asdict(DEFAULT_CONFIG)
    if rank == 0:  # one writer per file
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_file = (out / "log.csv" if rank == 0 else Path(os.devnull)).open("a", newline="")
    writer = csv.writer(log_file)
    if log_file.tell() == 0:
        writer.writerow(["step", "loss", "lr", "val_psnr_y", "minutes"])
    autocast = training_autocast(device, cfg.precision)

    start = time.time()
    last_ckpt = start
    running = 0.0

    def minutes() -> float:
        return (elapsed_before + time.time() - start) / 60

    def checkpoint() -> None:
        if rank:
            return
        _atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                      "rng": _rng_state(rng), "step": step, "elapsed": minutes() * 60, "total_steps": cfg.total_steps,
                      "time_fitted": time_fitted,
                      "config": json.dumps(asdict(cfg))}, ckpt_path)
        save_model(ema, out / "ema.safetensors", {"steps": step, "minutes": round(minutes(), 1), "arch_name": cfg.arch,
                                                   "scale": cfg.scale, "data": cfg.data_dir, "seed": cfg.seed})

    time_fitted = not cfg.total_steps or bool(cfg.extra.get("time_fitted"))
    cfg.extra["time_fitted"] = time_fitted
    if time_fitted and not cfg.max_minutes:
        raise ValueError("give --steps, or --max-minutes with --steps 0 to fit the schedule to the time budget "
                         "(a resumed time-boxed run needs --max-minutes: its new total)")
    calibrate_at = step + 50
    if time_fitted and step:  # resumed: the cosine resumes at the spent fraction of the new budget
        cfg.total_steps = step + max(1, int((cfg.max_minutes - minutes()) * 60 / (elapsed_before / step)))
    schedule_end = 10**9 if time_fitted else cfg.total_steps
    window_start, window_step = time.time(), step
    import sys

    from tqdm import tqdm

    # A live bar on a terminal; in a nohup'ed run (no tty) the CSV log and the validation lines are the record.
    bar = tqdm(total=cfg.total_steps or None, initial=step, unit="step", dynamic_ncols=True,
               disable=rank != 0 or not sys.stderr.isatty())
    model.train()
    with _StopRequest() as stop:  # Ctrl-C / kill: finish the step, checkpoint below, then say so
        while True:
            # Under DDP only rank 0's clock counts: every rank stops at the same step with the same lr.
            clock_stop = (step >= min(schedule_end, stop_at or schedule_end)
                          or bool(cfg.max_minutes and minutes() >= cfg.max_minutes))
            lr_now = learning_rate(cfg, step, minutes() / cfg.max_minutes if time_fitted else None)
            halt, lr_now, schedule_end = agree_across_ranks((rank == 0 and clock_stop) or stop.signal is not None,
                                                            lr_now, schedule_end, device, ddp)
            if halt:
                break
            for group in opt.param_groups:
                group["lr"] = lr_now
            lr_batch, hr_batch = rank_share(*make_batch(pool, rng, cfg.batch, cfg.patch, cfg.scale, cfg.degradation),
                                            rank, world)
            with autocast:
                loss = F.l1_loss(net(lr_batch.to(device)), hr_batch.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema_update(ema, model, cfg.ema_decay if step > cfg.warmup_steps else 0.0)
            step += 1
            bar.update(1)
            if time_fitted and step >= calibrate_at and step % 50 == 0:
                # the step count the time budget allows at the current speed: for the bar and the final validation
                per_step = (time.time() - window_start) / (step - window_step)
                cfg.total_steps = schedule_end = step + max(1, int((cfg.max_minutes - minutes()) * 60 / per_step))
                if step % 500 == 0 or step == calibrate_at:
                    log(f"{per_step:.2f} s/step: schedule set to {cfg.total_steps} steps")
                window_start, window_step = time.time(), step
            loss_value = global_mean(loss, ddp)  # the whole batch's, not this rank's slice
            if on_step is not None:
                on_step(step, loss_value)
            running = 0.98 * running + 0.02 * loss_value if running else loss_value
            val = ""
            if rank == 0 and val_pairs and (step % cfg.val_every == 0 or step == cfg.total_steps):
                val = f"{validate(ema, val_pairs, cfg.scale, device):.3f}"
                bar.total = cfg.total_steps
                bar.set_postfix(loss=f"{running:.4f}", val_psnr=val)
                (bar.write if not bar.disable else log)(
                    f"step {step} loss {running:.4f} lr {lr_now:.2e} val PSNR-Y {val} dB ({minutes():.1f} min)")
            if rank == 0 and (step % 50 == 0 or val):
                writer.writerow([step, f"{running:.5f}", f"{lr_now:.3e}", val, f"{minutes():.2f}"])
                log_file.flush()
            if time.time() - last_ckpt >= cfg.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = time.time()
    checkpoint()
    bar.close()
    log_file.close()
    log(f"stopped at step {step} after {minutes():.1f} min; checkpoint {ckpt_path}")
    if ddp:
        torch.distributed.destroy_process_group()
    if stop.signal is not None:
        raise TrainingInterrupted(f"interrupted ({signal.Signals(stop.signal).name}) at step {step}; "
                                  f"resume with the same command")
    return out
