"""Which RIB strategy is faster on this CPU: measured once per machine and layer shape, then remembered.

RIB reaches the attention kernel two ways (`attention.WindowAttention`): `concat` widens q and k by the
rank, `bias` adds a cached dense (heads, N, N) mask. Which is cheaper depends on the CPU, not only on the
window: on a Xeon with AMX, bf16 concat is nearly free and the bias wins only up to ws 16; on an AMD EPYC
with AVX512-BF16 but no AMX the bias wins at every window size in both fp32 and bf16 (ws 64 bf16: 288 vs
452 ms per layer at 128x128). A fixed table is right on one of them, so `auto` asks this module.

The probe times the layer's own attention core both ways on a synthetic batch of windows (about
`PROBE_TOKENS` tokens, interleaved, median of `PROBE_REPEATS`), with the layer's real weights, dtype and
the thread count in force. Results are keyed by the machine (CPU model, bf16/AMX flags, torch version,
threads) and the layer's shape (window, heads, head dim, rank, dtype), kept in memory and in
`<cache_home>/attention-strategy.json` (best effort: an unwritable cache only means probing again next
run). `RIBSR_STRATEGY_PROBE=0` turns probing off: `auto` then follows `FALLBACK_BIAS_UP_TO`, the table
measured on the Xeon. A probe costs well under a second per shape for ribsr-s and about two seconds per
large-window shape for SST-light.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ribsr_cli.engine.runtime import cpu_model_name
from ribsr_cli.fileutil import atomic_write_text
from ribsr_cli.paths import cache_home

CACHE_FILE = "attention-strategy.json"
DISABLE_ENV = "RIBSR_STRATEGY_PROBE"
#: tokens per timed call (windows x ws^2): enough windows that per-call overhead does not decide
PROBE_TOKENS = 8192
PROBE_REPEATS = 3
#: Largest window size at which the cached bias beats concat, per dtype, used when probing is off.
#: Measured (benchmarks/engine_speed.py, 1 thread, Xeon with AMX-BF16): in fp32 the bias costs 0.2-0.9x of
#: concat up to ws 64; in bf16 it wins only up to ws 16 (ws 32: 1.04x, ws 64: 1.26x slower).
FALLBACK_BIAS_UP_TO = {torch.float32: 64, torch.bfloat16: 16, torch.float16: 16}

_memory: dict[str, bool] = {}


def probing_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def machine_key() -> str:
    """What the answer depends on besides the layer: the CPU, its bf16/AMX units, torch, the thread count
    (the only part that can change within a process, so the rest is read once: this runs every forward)."""
    return f"{_cpu_key()}|{torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=None)
def _cpu_key() -> str:
    caps_fn = getattr(torch.cpu, "get_capabilities", None)
    caps = caps_fn() if caps_fn is not None else {}
    flags = ",".join(sorted(k for k in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if caps.get(k)))
    return f"{cpu_model_name()}|{flags}|torch {torch.__version__}"


def shape_key(window: int, heads: int, head_dim: int, rank: int, dtype: torch.dtype) -> str:
    return f"ws{window}-h{heads}-d{head_dim}-r{rank}-{str(dtype).removeprefix('torch.')}"


def cache_path() -> Path:
    """Where this user's probe answers are kept (`<cache_home>/attention-strategy.json`)."""
    return cache_home() / CACHE_FILE


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(machine: str, shape: str, record: dict) -> None:
    _memory[f"{machine}|{shape}"] = record["bias_faster"]
    data = _read_cache()
    data.setdefault(machine, {})[shape] = record
    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: the answer still holds for this process


def cached_decisions() -> dict[str, dict]:
    """This machine's probed shapes (for `ribsr info`): shape key -> {bias_ms, concat_ms, bias_faster}."""
    return _read_cache().get(machine_key(), {})


def bias_is_faster(window: int, heads: int, head_dim: int, rank: int, dtype: torch.dtype,
                   time_core: Callable[[str], float]) -> bool:
    """Whether the cached bias beats concat for this layer shape here. `time_core(strategy)` runs the layer's
    attention core once with that strategy and returns seconds; it is called only when no answer is stored."""
    if not probing_enabled():
        return window <= FALLBACK_BIAS_UP_TO.get(dtype, 0)
    machine, shape = machine_key(), shape_key(window, heads, head_dim, rank, dtype)
    hit = _memory.get(f"{machine}|{shape}")
    if hit is not None:
        return hit
    stored = _read_cache().get(machine, {}).get(shape)
    if isinstance(stored, dict) and isinstance(stored.get("bias_faster"), bool):
        _memory[f"{machine}|{shape}"] = stored["bias_faster"]
        return stored["bias_faster"]
    times: dict[str, list[float]] = {"bias": [], "concat": []}
    for strategy in times:  # warm-up: builds the cached bias / factors, first-touch allocations
        time_core(strategy)
    for _ in range(PROBE_REPEATS):  # interleaved, so load drift hits both alike
        for strategy in times:
            times[strategy].append(time_core(strategy))
    bias_s, concat_s = (statistics.median(times[s]) for s in ("bias", "concat"))
    record = {"bias_ms": round(bias_s * 1e3, 2), "concat_ms": round(concat_s * 1e3, 2),
              "bias_faster": bias_s < concat_s, "measured": time.strftime("%Y-%m-%d")}
    _remember(machine, shape, record)
    return record["bias_faster"]


def forget() -> None:
    """Drop the in-memory answers (tests; the cache file is `<cache_home>/attention-strategy.json`)."""
    _memory.clear()
