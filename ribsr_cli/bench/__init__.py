"""`ribsr bench`'s measurements: is RIB attention faster than RPB on *this* machine?

Every row is measured in one process, on the same inputs, with repeats interleaved across the rows being
compared, so a ratio of two rows is as fair as the machine allows. No typer/rich here: `ribsr bench`
(commands/bench.py) and `benchmarks/gpu_suite.py` both drive it. Device, precision, free memory and the
context a network runs under are the runtime's (`engine.runtime`), as for upscale and training.

Modules, each importing only those listed before it:
  options      what to measure (Options, parse_windows, parse_size, resolve_preset)
  timing       one row's wall time and peak memory, interleaved repeats, the row types, bench_device
  environment  the record of what a result was measured on; thread count under load
  core         the attention core under test and the RIB exactness check that guards every run
  attention    the attention table (variants, flex, CUDA profiler notes)
  network      the whole-network table (RIB vs RPB, inference and a training step)
  report       Result, ratios and notes, the one-line summary, the plot
"""

from __future__ import annotations

import os
import time

import torch

from ribsr_cli.bench.attention import attention_kernel_family, profile_note, run_attention
from ribsr_cli.bench.core import TOLERANCE, Check, CoreShape, RibMismatch, check_rib, make_layer
from ribsr_cli.bench.environment import auto_threads, bench_environment, busy_warning, device_name
from ribsr_cli.bench.network import run_network
from ribsr_cli.bench.options import MAP_SIDE, Options, Progress, parse_size, parse_windows, resolve_preset
from ribsr_cli.bench.report import (PlotUnavailable, Result, compare_attention, compare_network, plot_available,
                                    save_plot, slower_note, summary)
from ribsr_cli.bench.timing import (AttentionRow, NetworkRow, bench_device, peak_memory_mb, release_memory,
                                    repeat_counts, time_ms)
from ribsr_cli.engine.kernels import available_kernels
from ribsr_cli.engine.runtime import pick_dtype

__all__ = [
    "MAP_SIDE", "TOLERANCE", "AttentionRow", "Check", "CoreShape", "NetworkRow", "Options", "PlotUnavailable",
    "Progress", "Result", "RibMismatch", "attention_kernel_family", "bench_device", "bench_environment",
    "check_rib", "compare_attention", "compare_network", "device_name", "make_layer", "parse_size",
    "parse_windows", "peak_memory_mb", "plot_available", "profile_note", "release_memory", "resolve_preset",
    "run", "run_attention", "run_network", "save_plot", "slower_note", "summary", "time_ms",
]


def run(opts: Options, progress: Progress | None = None) -> Result:
    """Check, then the attention table, then the network table. Raises RibMismatch before any timing."""
    say = progress or (lambda _msg: None)
    device = bench_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    preset, config = resolve_preset(opts.preset)
    shape = CoreShape.from_config(config)
    threads_before = torch.get_num_threads()
    threads, why = (opts.threads, "--threads") if opts.threads else auto_threads(device)
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        env = bench_environment(device, dtype)
        env.update(preset=preset, map_tokens=MAP_SIDE * MAP_SIDE, heads=shape.heads, head_dim=shape.head_dim,
                   rank=shape.rank, quick=opts.quick,
                   target_s_per_row=opts.target_s, cpu_count=os.cpu_count(), threads_chosen_by=why,
                   load_avg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        env["busy_warning"] = busy_warning(env)
        kernels = ["auto"] + (available_kernels(device) if opts.all_kernels else [])
        say(f"check: RIB concatenated == explicit bias, windows {opts.windows}, kernels {kernels}")
        check = check_rib(shape, opts.windows or [], device, dtype, kernels, opts.seed, opts.corrupt_rib)
        if not check.ok:
            raise RibMismatch(check)
        result = Result(env, check)
        if opts.attention:
            result.attention = run_attention(opts, shape, device, dtype, env, say)
        if opts.network:
            result.network = run_network(opts, device, dtype, say)
        env["repeats"] = repeat_counts(result.attention + result.network)
        env["repeats_chosen_by"] = "--repeats" if opts.repeats else f"auto (~{opts.target_s:g} s per row)"
        env["wall_s"] = round(time.perf_counter() - start, 2)
        return result
    finally:
        torch.set_num_threads(threads_before)
