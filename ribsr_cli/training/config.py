"""Every knob of a training run in one dataclass, with the defaults that depend on the machine resolved once.

`TrainConfig` is what `ribsr train` fills from its flags, what `config.json` and every `last.pt` record, and
what the training modules read; it holds no state of the run itself (that is the checkpoint's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ribsr_cli.engine.config import SSTConfig
from ribsr_cli.errors import UsageError
from ribsr_cli.paths import benchmarks_dir

#: the benchmark set a run validates on when none is named: Set5, the smallest of the standard sets
DEFAULT_VAL_SET = "Set5"
#: what a damage-conditioned network can be told in training (`TrainConfig.damage_told`)
DAMAGE_TOLD = ("truth", "estimate", "context")


class FlagConflict(UsageError):
    """A `TrainConfig` value that does not fit the others; its path is the `ribsr train` option it comes
    from (`flag`), so the command can name that option and its value without reading the message."""

    def __init__(self, flag: str, reason: str) -> None:
        super().__init__(flag, reason)
        self.flag = flag


@dataclass
class TrainConfig:
    arch: str = "ribsr-s"
    scale: int = 2
    out_dir: str = "runs/ribsr-s-x2"
    data_dir: str = "data/prepared"
    # None: Set5 in the shared benchmarks (`paths.benchmarks_dir`), resolved when the config is made, so neither
    # the working directory nor the moment of import decides; "": no validation
    val_dir: str | None = None
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
    # fields of training.degrade.DegradationConfig that differ from its defaults (`--degradation-config FILE`);
    # the run records them, and a resumed run keeps them
    degradation_overrides: dict[str, Any] = field(default_factory=dict)
    # > 0: HR crops biased toward detail (`training.pool.HRPool.random_crop`; ~12 levels = an ordinary photo's
    # texture); 0: uniform crops, as every run before 0.8.0
    patch_detail: float = 0.0
    # a damage-conditioned arch (ribsr-sd): the trained `engine.damage.DamageEstimator` built into the network
    # (`python3 -m ribsr_cli.training.damage_estimator`); it stays frozen, and the network is told each sample's
    # true damage plus Gaussian jitter of `damage_jitter` per component (blur, noise, JPEG; Damage.vector
    # units): about the estimator's own held-out error (x2, 25 min: blur 0.19 px, noise 0.8 levels, JPEG 2.2
    # points, i.e. 0.19 / 0.10 / 0.055), so the network trusts each reading as far as it deserves: little for
    # blur, which a small crop hardly tells apart from a soft scene, more for noise and JPEG
    damage_estimator: str = ""
    damage_jitter: tuple[float, float, float] = (0.2, 0.1, 0.06)
    # what a conditioned network is told in training: "truth" (the drawn damage plus `damage_jitter`) or
    # "estimate" (its frozen estimator's reading of each LR patch, what it is told at run time; 0.9.0: a
    # network trained on the truth lost 0.04-0.05 dB to being told the estimate instead, Set5/photos x2), or
    # "context" (its estimator's reading of the ESTIMATE_CROP-px LR region the patch is cut from: run time reads
    # 128-px crops of the whole image, and a 48-px patch's reading is a poorer one: measured on v5, noise read
    # 0.34 levels low, blur truth ~ 0.56 x reading + 0.18 on 48 px against 0.86 x + 0.05 on 128 px, so a
    # network told patch readings learns to distrust them and over-denoises a run-time reading);
    # "" = not given: "truth" for a new run, the run's own on resume
    damage_told: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.degradation_overrides and self.degradation != "real":  # they change the real pipeline only
            raise FlagConflict("--degradation-config", "needs --degradation real")
        if self.damage_estimator and self.degradation != "real":
            raise FlagConflict("--damage-estimator", "needs --degradation real")
        if self.damage_told not in ("", *DAMAGE_TOLD):
            raise FlagConflict("--damage-told", f"choose {', '.join(DAMAGE_TOLD[:-1])} or {DAMAGE_TOLD[-1]}")
        if not (math.isfinite(self.patch_detail) and self.patch_detail >= 0):
            raise FlagConflict("--patch-detail", "must be 0 (uniform crops) or a positive number")
        if self.val_dir is None:
            self.val_dir = str(benchmarks_dir() / DEFAULT_VAL_SET)


def architecture(cfg: TrainConfig) -> SSTConfig:
    """The run's architecture: a preset family at the run's scale, or a full preset name or a `network_g`
    dict with the run's scale (the one preset resolver; no network is built to read it)."""
    from ribsr_cli.engine.presets import FAMILIES, get_config

    if isinstance(cfg.arch, str) and cfg.arch in FAMILIES:
        return get_config(cfg.arch, cfg.scale)
    base = get_config(cfg.arch) if isinstance(cfg.arch, str) else SSTConfig.from_network_g(dict(cfg.arch))
    return base.with_scale(cfg.scale)
