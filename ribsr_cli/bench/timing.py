"""How one row is measured: wall time, peak memory, interleaved repeats; and the rows that hold them.

Every ratio bench prints compares rows measured here in one process, on the same inputs, with repeats
interleaved across the rows, so drift in machine load falls on every row alike.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ribsr_cli.bench.options import Options
from ribsr_cli.engine.runtime import pick_device

#: How each device type is timed. Bench runs on these device types only (`bench_device`).
TIMING_METHOD = {
    "cpu": "time.perf_counter",
    "cuda": "CUDA events after synchronisation",
    "mps": "time.perf_counter between torch.mps.synchronize() calls",
}
MEMORY_METHOD = {
    "cpu": "torch.profiler allocator events: peak live tensor bytes during one call above the level before it",
    "cuda": "torch.cuda.max_memory_allocated during one call, minus what was allocated before it",
    "mps": "not measured: MPS keeps no peak-allocation statistic",
}


def bench_device(name: str) -> torch.device:
    """The runtime's device choice (`pick_device`: auto, cpu, cuda[:N], mps), refused here only for a device
    type bench has no timer for (xpu, meta, ...): waiting for queued work differs per back-end, and a time
    taken without it measures the launch, not the computation.

    MPS is timed with `torch.mps.synchronize()` around `perf_counter`; its peak memory is not measured
    (torch.mps keeps current and driver totals, no peak), so its memory columns read "—".
    """
    device = pick_device(name)
    if device.type not in TIMING_METHOD:
        *others, last = TIMING_METHOD
        raise ValueError(f"bench cannot time device {name!r}: it measures on {', '.join(others)} and {last}")
    return device


# ---- rows ---------------------------------------------------------------------------


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class Timing:
    """Repeated wall times of one row; a non-empty `skipped` means it did not run (and why)."""

    times_ms: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    skipped: str = ""

    @property
    def ms_median(self) -> float | None:
        return _quantile(self.times_ms, 0.5)

    @property
    def ms_p10(self) -> float | None:
        return _quantile(self.times_ms, 0.1)

    @property
    def ms_p90(self) -> float | None:
        return _quantile(self.times_ms, 0.9)


@dataclass
class AttentionRow(Timing):
    window: int = 0
    variant: str = ""
    kernel: str = ""
    dtype: str = ""
    train: bool = False
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        # a skipped row ran no kernel: its reason goes to "skipped", never into "kernel"
        return {"window": self.window, "variant": self.variant, "kernel": None if self.skipped else self.kernel,
                "dtype": self.dtype, "ms_median": _round(self.ms_median), "ms_p10": _round(self.ms_p10),
                "ms_p90": _round(self.ms_p90), "peak_mb": _round(self.peak_mb, 3), "train": self.train,
                "repeats": len(self.times_ms), "skipped": self.skipped or None, "note": self.note or None}


@dataclass
class NetworkRow(Timing):
    preset: str = ""
    attn_type: str = ""
    input: str = ""
    train: bool = False
    kernel: str = ""
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        # `kernel` holds "kernels [strategies]" as the table shows it; the JSON keeps the two apart
        kernels, _, strategies = ("" if self.skipped else self.kernel).partition(" [")
        return {"preset": self.preset, "attn_type": self.attn_type, "input": self.input,
                "kernel": kernels or None, "strategy": strategies.rstrip("]") or None,
                "ms_median": _round(self.ms_median), "ms_p10": _round(self.ms_p10), "ms_p90": _round(self.ms_p90),
                "peak_mb": _round(self.peak_mb, 3), "train": self.train, "repeats": len(self.times_ms),
                "skipped": self.skipped or None, "note": self.note or None}


def repeat_counts(rows: list[Timing]) -> int | dict[str, int] | None:
    """Timed repeats that ran: one count when every timed row had the same, else the range."""
    counts = sorted({len(r.times_ms) for r in rows if r.times_ms})
    if not counts:
        return None
    return counts[0] if len(counts) == 1 else {"min": counts[0], "max": counts[-1]}


# ---- time and memory of one call ----------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an asynchronous device (CUDA, MPS); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call: CUDA events (after a sync, so earlier work is not billed) or perf_counter
    between synchronisations."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    synchronize(device)
    start_s = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start_s) * 1e3


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Kineto prints start/stop lines straight to fd 2; keep them out of the user's terminal."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of (allocated - freed) tensor bytes during fn, from the profiler's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # raw allocator events, in order: exact peaks, including temporaries inside one op
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except AttributeError:  # older/newer layouts: net bytes per leaf op, in order
        events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                        if e.self_cpu_memory_usage)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Extra memory one call needs at its peak, above what was allocated before it (MiB); None on MPS,
    which has no peak statistic (the call still runs: callers rely on it to fill caches)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if device.type == "mps":
        fn()
        synchronize(device)
        return None
    return _cpu_peak_bytes(fn) / 2**20


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# ---- measuring rows -----------------------------------------------------------------


@dataclass
class Job:
    """One row to measure: `fn` runs it once, `reset` drops caches so the memory call pays for them."""

    fn: Callable[[], Any]
    reset: Callable[[], None] = lambda: None
    describe: Callable[[], str] = lambda: ""


def failure_reason(exc: BaseException) -> str:
    """One line for a row that could not run: out of memory, or the exception's first line."""
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "unavailable: out of memory"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"unavailable: {type(exc).__name__}: {first[:160]}"


def measure(jobs: dict[str, Job], rows: dict[str, Timing], device: torch.device, opts: Options,
            on_warm: Callable[[str, Any], None] | None = None, warmup: bool = True) -> None:
    """Warm up, measure peak memory, then time every row with interleaved repeats.

    Round-robin repeats (all rows once, then all again ...) spread drift in
    machine load (a training job on the other core, turbo states) over every
    row alike. The first timed round sizes each row's count to ~target_s.
    Without `warmup` the memory call is the first call (it is never timed).
    """
    live: dict[str, Job] = {}
    for name, job in jobs.items():
        try:
            if warmup:
                out = job.fn()
                synchronize(device)
                if on_warm:
                    on_warm(name, out)
                del out
                job.reset()
            rows[name].peak_mb = peak_memory_mb(job.fn, device)
            if on_warm and not warmup:
                on_warm(name, None)
            live[name] = job
        except Exception as exc:  # one row failing must not sink the benchmark
            rows[name].skipped = failure_reason(exc)
            release_memory(device)
    if not live:
        return
    lo, hi = opts.repeat_bounds(device)
    counts: dict[str, int] = {}
    for name, job in live.items():
        first = time_ms(job.fn, device)
        rows[name].times_ms.append(first)
        wanted = opts.target_s * 1e3 / max(first, 1e-3)
        counts[name] = opts.repeats or int(min(hi, max(lo, round(wanted))))
    for r in range(1, max(counts.values())):
        for name, job in live.items():
            if r < counts[name]:
                rows[name].times_ms.append(time_ms(job.fn, device))
