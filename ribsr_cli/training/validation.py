"""Validation during training is `ribsr eval` run on the EMA in memory: the same pairs, forward and score.

So the PSNR-Y a run writes to log.csv is the number `ribsr eval` reports for the run's ema.safetensors, and
a run trained on real degradations is monitored on exactly what `eval --degrade real` scores. Each piece is
the evaluation's own, not a copy:

- pairs: `evaluation.discover_dataset` + `load_pair` (mod-crop; the set's official LR files where it ships
  them, else ribsr's bicubic; `degrade_for_eval` for "real"; grey images stay grey), loaded once per run;
- forward: the engine's `Upscaler` with eval's default options (`RunOptions.for_scoring`: fp32, TF32 off on
  CUDA, attention kernel and RIB strategy `auto`, whole images through the engine's tiler, which quantises
  SR to uint8);
- score: `evaluation.to_uint8` and `metrics.psnr` on Y with a `scale`-pixel border, the per-image mean as
  `evaluation.MethodResult.psnr` takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ribsr_cli.errors import UsageError
from ribsr_cli.evaluation import discover_dataset, load_pair, to_uint8
from ribsr_cli.imaging.metrics import psnr

#: (image name, LR uint8, mod-cropped HR uint8), HxW for grey images, HxWx3 otherwise
Pair = tuple[str, np.ndarray, np.ndarray]


def eval_degrade_mode(degradation: str) -> str:
    """The `ribsr eval --degrade` mode that scores a run trained with `degradation` ("bicubic" or "real")."""
    return "real" if degradation == "real" else "none"


def load_validation(val_dir: str | Path, scale: int, degradation: str = "bicubic") -> list[Pair]:
    """The (name, lr, hr) pairs `ribsr eval DIR -s SCALE` scores, with `--degrade real` for a "real" run.

    A folder that is missing, holds no images or a mismatched LR file is a `UsageError` (evaluation's
    `EvalError` is one), raised before the first step rather than at the first validation."""
    if not Path(val_dir).is_dir():
        raise UsageError(val_dir, "no such folder (the validation set: give --val DIR, or set RIBSR_SHARED to "
                                  "the folder holding benchmarks/Set5)")
    dataset = discover_dataset(val_dir)
    mode = eval_degrade_mode(degradation)
    return [(hr_file.stem, *load_pair(dataset, hr_file, scale, degrade=mode)[:2]) for hr_file in dataset.hr_files]


def eval_upscaler(model: nn.Module, device: torch.device) -> Callable[[np.ndarray, int], np.ndarray]:
    """uint8 LR → uint8 SR exactly as `ribsr eval` runs a model by default: the engine's `Upscaler` with
    eval's options (`RunOptions().for_scoring()`: fp32, whole images, attention `auto`, no TTA)."""
    from ribsr_cli.engine.runner import LoadedModel, RunOptions, Upscaler

    return Upscaler(LoadedModel.of(model), RunOptions(device=str(device)).for_scoring())


def validate(model: nn.Module, pairs: list[Pair], scale: int, device: torch.device | str | None = None) -> float:
    """Mean PSNR-Y over the pairs, scored as `ribsr eval` scores. Each LR goes to `device` (default: the
    model's) and the SR comes back to the CPU: the same lines run for a CPU and a CUDA model. Sets the
    model's attention to eval's `auto` (the trainer passes its EMA, which only validation and export run)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    return score_pairs(eval_upscaler(model, device), pairs, scale)


def score_pairs(upscale: Callable[[np.ndarray, int], np.ndarray], pairs: list[Pair], scale: int) -> float:
    """Mean PSNR-Y of `upscale` (an `eval_upscaler`) over the pairs. The trainer builds its EMA's upscaler
    once and scores it here at every validation: cached positional tensors follow the EMA's in-place
    updates (they are keyed on the parameters' versions)."""
    scores = [psnr(to_uint8(upscale(lr, scale)), hr, crop_border=scale, test_y=True) for _, lr, hr in pairs]
    return float(np.mean(scores))
