"""A run's checkpoint: everything a resume needs in `last.pt`, the EMA weights in `ema.safetensors`, and the
EMA that scored best on validation so far in `best.safetensors` (what `ribsr export` ships by default).

`last.pt` holds model, EMA, optimiser, the RNG states (numpy's stream that draws the batches, Python's and
torch's), step, training seconds and the schedule's length, written atomically: a run killed at any moment
resumes from the last complete file, on any device, drawing the very batches it would have drawn.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ribsr_cli.engine.checkpoint import PROVENANCE_KEY, read_state_dict, save_model
from ribsr_cli.engine.grow import count_blocks, damage_layout, grow_state
from ribsr_cli.fileutil import atomic_path
from ribsr_cli.training.config import TrainConfig

STATE_FILE = "last.pt"
EMA_FILE = "ema.safetensors"
BEST_FILE = "best.safetensors"


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The numpy, Python and torch RNG states, as `last.pt` stores them (numpy's and Python's as JSON)."""
    return {"numpy": json.dumps(rng.bit_generator.state), "python": json.dumps(random.getstate()),
            "torch": torch.get_rng_state()}


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Put back what `rng_state` saved: `rng`'s stream, Python's and torch's (a CPU ByteTensor)."""
    rng.bit_generator.state = json.loads(state["numpy"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])


def save_checkpoint(out: Path, cfg: TrainConfig, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    rng: np.random.Generator, *, step: int, seconds: float, time_fitted: bool) -> None:
    """`last.pt` (atomically) and `ema.safetensors` with its provenance; one writer: call on rank 0 only."""
    _atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                  "rng": rng_state(rng), "step": step, "elapsed": seconds, "total_steps": cfg.total_steps,
                  "time_fitted": time_fitted, "config": json.dumps(asdict(cfg))}, out / STATE_FILE)
    save_model(ema, out / EMA_FILE, _provenance(cfg, step, seconds))


def _provenance(cfg: TrainConfig, step: int, seconds: float) -> dict[str, Any]:
    return {"steps": step, "minutes": round(seconds / 60, 1), "arch_name": cfg.arch, "scale": cfg.scale,
            "data": cfg.data_dir, "seed": cfg.seed}


def save_best(out: Path, cfg: TrainConfig, ema: nn.Module, *, step: int, seconds: float, val_psnr_y: float) -> None:
    """`best.safetensors`: the EMA at its best validation so far, with the score (rank 0 only).

    Why keep it: a fine-tune on a distribution other than the validation set's (the real-photo runs) peaks on
    validation before its schedule ends and slides after (runs/ribsr-s-real-x2-v2: 32.241 dB at 30 min, 32.174 at
    45), so the last EMA is not the one to ship. The score travels in the file's metadata, so a resumed run
    keeps comparing against it.
    """
    save_model(ema, out / BEST_FILE, dict(_provenance(cfg, step, seconds), val_psnr_y=round(val_psnr_y, 4),
                                          val_set=Path(cfg.val_dir).name, val_degradation=cfg.degradation))


def best_score(out: Path) -> float | None:
    """The validation PSNR-Y stored in a run's `best.safetensors`, or None when the run has none yet."""
    path = out / BEST_FILE
    if not path.is_file():
        return None
    _, meta = read_state_dict(path)
    value = json.loads(meta.get(PROVENANCE_KEY, "{}")).get("val_psnr_y")
    return float(value) if value is not None else None


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
    set_rng_state(rng, state["rng"])


def init_body_from(model: nn.Module, path: str | Path) -> list[str]:
    """Copy every tensor whose name and shape match (the body of a x2 model into x3/x4); returns skipped keys.

    A checkpoint with fewer blocks or damage channels than `model` is grown first (`engine.grow`: the extra
    blocks start as exact identities, a new `damage_proj` at zero), so a deeper or damage-conditioned
    network starts out computing what the checkpoint computes.
    """
    state, _ = read_state_dict(path)
    config = getattr(model, "config", None)
    n_source = count_blocks(state)
    source_damage, source_modulated = damage_layout(state)
    if config is not None and (0 < n_source < config.n_blocks or source_damage < config.damage_channels
                               or source_modulated < config.damage_modulation):
        source = dataclasses.replace(config, n_blocks=n_source or config.n_blocks, damage_channels=source_damage,
                                     damage_modulation=source_modulated)
        state = grow_state(state, source, config)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
