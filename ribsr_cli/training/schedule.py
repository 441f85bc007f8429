"""When a run learns how fast and when it stops: warm-up + cosine, EMA, and the clock a time-boxed run follows.

Every time-based decision of the loop (stop, learning rate, the step estimate, the checkpoint interval) reads
one `RunClock`, so training minutes add up across resumes and a test can speed up one rank's clock in one place.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from ribsr_cli.training.config import TrainConfig

#: a time-fitted run re-estimates its step count every this many steps (the first time this many after its start)
CALIBRATE_EVERY = 50
#: ... and says so in the log every this many steps
REPORT_EVERY = 500
#: the schedule's end while a time-fitted run has no estimate yet: the clock, not a step count, stops it
NO_STEP_LIMIT = 10**9


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
    """ema ← decay·ema + (1 − decay)·model, every tensor of the state dict (buffers too) in one fused call."""
    e = list(ema.state_dict().values())
    m = list(model.state_dict().values())
    torch._foreach_lerp_(e, m, 1.0 - decay)


class RunClock:
    """Training time across resumes: the seconds the checkpoint recorded plus this process's wall time."""

    def __init__(self, seconds_before: float = 0.0) -> None:
        self.seconds_before = seconds_before
        self._start = time.time()

    @staticmethod
    def now() -> float:
        return time.time()

    def seconds(self) -> float:
        return self.seconds_before + time.time() - self._start

    def minutes(self) -> float:
        return self.seconds() / 60


class StepSchedule:
    """Where the run ends and the learning rate of each step.

    With `total_steps` the cosine runs over that many steps. With `total_steps` 0 (and `max_minutes`) the run
    is time-fitted: the cosine follows the spent fraction of the budget, and the step count the budget allows
    is re-estimated from the recent speed (for the bar and the final validation only). A resumed time-fitted
    run keeps being one (the checkpoint says so) and needs `max_minutes`, its new total.

    Updates `cfg.total_steps` and `cfg.extra["time_fitted"]`, which the checkpoint records.
    """

    def __init__(self, cfg: TrainConfig, step: int, clock: RunClock) -> None:
        self.cfg, self.clock = cfg, clock
        self.time_fitted = not cfg.total_steps or bool(cfg.extra.get("time_fitted"))
        cfg.extra["time_fitted"] = self.time_fitted
        if self.time_fitted and not cfg.max_minutes:
            raise ValueError("give --steps, or --max-minutes with --steps 0 to fit the schedule to the time budget "
                             "(a resumed time-boxed run needs --max-minutes: its new total)")
        self.calibrate_at = step + CALIBRATE_EVERY
        if self.time_fitted and step:  # resumed: the cosine resumes at the spent fraction of the new budget
            cfg.total_steps = step + max(1, int((cfg.max_minutes - clock.minutes()) * 60
                                                / (clock.seconds_before / step)))
        #: the step the run stops at; under DDP rank 0's value, set by the trainer each step
        self.end = NO_STEP_LIMIT if self.time_fitted else cfg.total_steps
        self._window_start, self._window_step = clock.now(), step

    def clock_says_stop(self, step: int, stop_at: int | None) -> bool:
        """The end (or `stop_at`, an interruption at a given step) is reached, or the time budget is spent."""
        return (step >= min(self.end, stop_at or self.end)
                or bool(self.cfg.max_minutes and self.clock.minutes() >= self.cfg.max_minutes))

    def learning_rate(self, step: int) -> float:
        fraction = self.clock.minutes() / self.cfg.max_minutes if self.time_fitted else None
        return learning_rate(self.cfg, step, fraction)

    def recalibrate(self, step: int, log: Callable[[str], None]) -> None:
        """After a step: a time-fitted run re-estimates, every CALIBRATE_EVERY steps, the steps its budget allows."""
        if not (self.time_fitted and step >= self.calibrate_at and step % CALIBRATE_EVERY == 0):
            return
        per_step = (self.clock.now() - self._window_start) / (step - self._window_step)
        self.cfg.total_steps = self.end = step + max(1, int((self.cfg.max_minutes - self.clock.minutes()) * 60
                                                            / per_step))
        if step % REPORT_EVERY == 0 or step == self.calibrate_at:
            log(f"{per_step:.2f} s/step: schedule set to {self.cfg.total_steps} steps")
        self._window_start, self._window_step = self.clock.now(), step
