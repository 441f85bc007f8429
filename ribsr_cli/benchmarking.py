"""Measurement logic of `ribsr bench`: is RIB attention faster than RPB on *this* machine?

The paper's claim: RIB's rank-R positional factors let biased window attention
run as a plain dot product (the factors are concatenated to q and k), so it
stays on FlashAttention, whereas an RPB transformer adds a dense (heads, N, N)
bias to the scores. Every row here is measured in one process, on the same
inputs, with repeats interleaved across the rows being compared, so a ratio of
two rows is as fair as the machine allows. The attention rows call
`WindowAttention._core`, the exact code the network runs, not a re-implementation.

No typer/rich here: `ribsr bench` and `benchmarks/gpu_suite.py` both drive it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ribsr_cli.engine import attention_report, build_model, configure_attention, get_preset
from ribsr_cli.engine.attention import WindowAttention
from ribsr_cli.engine.kernels import attend, available_kernels
from ribsr_cli.engine.rib import rib_bias, rib_factors

#: Every attention row processes one MAP_SIDE x MAP_SIDE feature map, so work is comparable across windows.
MAP_SIDE = 192
DEFAULT_WINDOWS = [8, 16, 32, 48, 64, 96]
QUICK_WINDOWS = [8, 16, 32]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
TIMING_METHOD = {"cuda": "CUDA events after synchronisation", "cpu": "time.perf_counter"}
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during one call, minus what was allocated before it",
    "cpu": "torch.profiler allocator events: peak live tensor bytes during one call above the level before it",
}
#: Rows whose estimated memory exceeds this share of free memory are skipped, not attempted (no OOM kill).
MEMORY_SHARE = 0.6

Progress = Callable[[str], None]


class RibMismatch(RuntimeError):
    """RIB's concatenated form disagreed with explicit-bias attention: timings would be meaningless."""

    def __init__(self, check: Check) -> None:
        super().__init__(
            f"RIB check failed: max abs error {check.max_abs_err:.3g} > tolerance {check.tolerance:g} "
            f"({'; '.join(check.details)})"
        )
        self.check = check


class PlotUnavailable(RuntimeError):
    """--plot needs matplotlib, an optional dependency."""


# ---- options ----------------------------------------------------------------------


def parse_windows(text: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32]; ValueError with the offending item otherwise."""
    windows: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"empty item in {text!r}; use e.g. 8,16,32")
        try:
            ws = int(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a whole number; use e.g. 8,16,32") from None
        if not 2 <= ws <= MAP_SIDE:
            raise ValueError(f"window {ws} is outside 2..{MAP_SIDE}")
        if ws not in windows:
            windows.append(ws)
    return windows


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720): the network's *output* size."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if w < 8 or h < 8:
        raise ValueError(f"size {w}x{h} is too small (at least 8x8)")
    return w, h


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch.cuda.is_available() is False")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto is what `ribsr upscale` runs (`inference.pick_dtype`): bf16 on CUDA and on CPUs with native
    bf16, fp32 on other CPUs."""
    if name == "auto":
        from ribsr_cli.engine.runtime import pick_dtype

        return pick_dtype("auto", device)
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r}; use auto, fp32, bf16 or fp16")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def resolve_preset(name: str) -> tuple[str, dict[str, Any]]:
    """A preset by full name ('SST-light-x4') or family ('SST-light' means x4), or the architecture of a shipped
    or stored model (`-m NAME`; weights do not change speed, so only the architecture is used)."""
    from ribsr_cli.catalog import find_model

    with contextlib.suppress(KeyError):
        return f"{name}-x4", get_preset(f"{name}-x4")
    with contextlib.suppress(KeyError):
        return name, get_preset(name)
    entry = find_model(name)
    if entry is not None and entry.arch:
        return entry.name, dict(entry.arch)
    return name, get_preset(name)  # raises the registry's own message for unknown names


@dataclass
class Options:
    """What to measure. None fields take a default that depends on `quick`."""

    quick: bool = False
    windows: list[int] | None = None
    preset: str = "SST-light"
    size: tuple[int, int] | None = None  # output W, H of the network section
    device: str = "auto"
    dtype: str = "auto"
    repeats: int | None = None  # fixed count; None sizes each row to ~target_s
    train: bool = False
    all_kernels: bool = False
    batch: int | None = None
    patch: int | None = None  # LR patch side of the training step
    attention: bool = True
    network: bool = True
    flex: bool | None = None  # compiling flex_attention costs seconds per window: off in --quick
    corrupt_rib: bool = False  # perturb the RIB path (tests prove the guard aborts)
    target_s: float | None = None
    threads: int | None = None  # CPU threads for the run; None: auto_threads()
    seed: int = 0

    def __post_init__(self) -> None:
        q = self.quick
        self.windows = list(self.windows or (QUICK_WINDOWS if q else DEFAULT_WINDOWS))
        self.size = self.size or ((256, 144) if q else (1280, 720))
        self.batch = self.batch or (2 if q else 4)
        self.patch = self.patch or (32 if q else 64)
        self.flex = (not q) if self.flex is None else self.flex
        self.target_s = self.target_s or (0.2 if q else 1.5)

    def repeat_bounds(self, device: torch.device) -> tuple[int, int]:
        """(fewest, most) timed repeats per row: GPUs are fast and noisy, so they get more."""
        if device.type == "cuda":
            return (5, 50) if self.quick else (10, 200)
        return (3, 8) if self.quick else (3, 30)


# ---- results ------------------------------------------------------------------------


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


@dataclass
class Check:
    max_abs_err: float
    ok: bool
    tolerance: float
    details: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"max_abs_err": float(self.max_abs_err), "ok": bool(self.ok)}


@dataclass
class Result:
    env: dict[str, Any]
    check: Check
    attention: list[AttentionRow] = field(default_factory=list)
    network: list[NetworkRow] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"env": self.env, "attention": [r.as_json() for r in self.attention],
                "network": [r.as_json() for r in self.network], "check": self.check.as_json()}


# ---- timing and memory primitives ---------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call: CUDA events (after a sync, so earlier work is not billed) or perf_counter."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
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

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Extra memory one call needs at its peak, above what was allocated before it (MiB)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return _cpu_peak_bytes(fn) / 2**20


def free_memory_bytes(device: torch.device) -> int:
    """CUDA's free memory, else the kernel's MemAvailable (so a huge row is skipped, not OOM-killed)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 8 * 2**30


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Job:
    """One row to measure: `fn` runs it once, `reset` drops caches so the memory call pays for them."""

    fn: Callable[[], Any]
    reset: Callable[[], None] = lambda: None
    describe: Callable[[], str] = lambda: ""


def _failure(exc: BaseException) -> str:
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
            rows[name].skipped = _failure(exc)
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


# ---- environment --------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def backend_flags() -> dict[str, Any]:
    """torch.backends switches that change which kernels run (or how fast)."""
    b = torch.backends
    probes: dict[str, Callable[[], Any]] = {
        "cudnn.enabled": lambda: b.cudnn.enabled,
        "cudnn.benchmark": lambda: b.cudnn.benchmark,
        "cuda.matmul.allow_tf32": lambda: b.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: b.cudnn.allow_tf32,
        "cuda.flash_sdp": b.cuda.flash_sdp_enabled,
        "cuda.mem_efficient_sdp": b.cuda.mem_efficient_sdp_enabled,
        "cuda.cudnn_sdp": b.cuda.cudnn_sdp_enabled,
        "cuda.math_sdp": b.cuda.math_sdp_enabled,
        "mkldnn": b.mkldnn.is_available,
        "openmp": b.openmp.is_available,
        "cpu.capability": b.cpu.get_cpu_capability,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
    }
    flags = {}
    for name, probe in probes.items():
        try:
            flags[name] = probe()
        except Exception as exc:  # a flag missing from this torch build
            flags[name] = f"n/a ({type(exc).__name__})"
    return flags


def bench_environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "dtype": dtype_name(dtype),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "backends": backend_flags(),
        "timing": TIMING_METHOD[device.type],
        "memory": MEMORY_METHOD[device.type],
    }


# ---- attention core -----------------------------------------------------------------


@dataclass(frozen=True)
class CoreShape:
    """Heads, head dim and RIB rank of the chosen preset (rank: the largest, used by its big windows)."""

    heads: int
    head_dim: int
    rank: int
    hidden: int
    n_freqs: int

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> CoreShape:
        heads = arch["num_heads"][0]
        return cls(heads, arch["dim"] // heads, max(arch["ranks"]), arch["rib_hidden_dim"], arch["rib_n_freqs"])


def windows_for(ws: int) -> int:
    """Windows that tile one MAP_SIDE^2 map (rounded: token count stays ~constant for any ws)."""
    return max(1, round(MAP_SIDE**2 / ws**2))


def make_layer(shape: CoreShape, ws: int, positional: str, device: torch.device, seed: int,
               corrupt: bool = False) -> WindowAttention:
    """A window-attention layer whose positional term is O(1), like a trained one.

    Freshly initialised RIB/RPB weights give biases of ~1e-3, which would let
    a wrong RIB path slip under the check's tolerance; these give a bias of
    standard deviation ~1 (max ~10), like a trained model's.
    """
    torch.manual_seed(seed + ws)
    layer = WindowAttention(shape.heads * shape.head_dim, shape.heads, ws, shape.rank, positional=positional,
                            rib_hidden_dim=shape.hidden, rib_n_freqs=shape.n_freqs, gate=False)
    gen = torch.Generator().manual_seed(seed * 7919 + ws)
    with torch.no_grad():
        if positional == "RIB":
            for p, std in ((layer.to_hidden, 0.3), (layer.hidden_b, 0.3), (layer.to_q, 0.2), (layer.to_k, 0.2)):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        elif positional == "RPB":
            p = layer.relative_position_bias
            p.copy_(torch.randn(p.shape, generator=gen))
    if corrupt:  # the classic bug: Qp scaled by 1/sqrt(4R) instead of 1/sqrt(R)
        layer.rank *= 4
    layer.strict_kernel = True  # a row times the kernel it names, never a silent fallback
    return layer.to(device)


def core_inputs(shape: CoreShape, ws: int, device: torch.device, dtype: torch.dtype, seed: int,
                windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (windows, heads, ws^2, head_dim), standard normal, the same for every variant."""
    gen = torch.Generator().manual_seed(seed * 104729 + ws)
    size = (windows or windows_for(ws), shape.heads, ws * ws, shape.head_dim)
    return tuple(torch.randn(size, generator=gen).to(device=device, dtype=dtype) for _ in range(3))  # type: ignore[return-value]


def check_rib(shape: CoreShape, windows: list[int], device: torch.device, dtype: torch.dtype,
              kernels: list[str], seed: int = 0, corrupt: bool = False, chunk: int = 1024) -> Check:
    """RIB's concatenated attention == explicit-bias attention with the materialised Qp Kp^T / sqrt(R).

    One window per size; the fp32 reference is built query-chunk by chunk so
    even a 96x96 window needs little memory.
    """
    tol = TOLERANCE[dtype]
    worst, details = 0.0, []
    for ws in windows:
        q, k, v = core_inputs(shape, ws, device, dtype, seed, windows=1)
        for kernel in kernels:
            layer = make_layer(shape, ws, "RIB", device, seed, corrupt).eval()
            layer.kernel, layer.strategy = kernel, "concat"
            with torch.no_grad():
                out = layer._core(q, k, v).float()
                q_pos, k_pos = rib_factors(layer.to_hidden, layer.hidden_b, layer.to_q, layer.to_k, ws,
                                           layer.rib_n_freqs)
                err = 0.0
                for start in range(0, ws * ws, chunk):
                    rows = slice(start, start + chunk)
                    ref, _ = attend(q[:, :, rows].float(), k.float(), v.float(), rib_bias(q_pos[:, rows], k_pos),
                                    scale=1.0 / math.sqrt(shape.head_dim), kernel="math")
                    err = max(err, (out[:, :, rows] - ref).abs().max().item())
            if not math.isfinite(err) or err > tol:
                details.append(f"window {ws}, kernel {kernel} ({layer.last_kernel}): {err:.3g}")
            worst = max(worst, err) if math.isfinite(err) else math.inf
    return Check(worst, not details, tol, details)


def _estimate_bytes(variant: str, windows: int, heads: int, n: int, train: bool, device: torch.device) -> int:
    """Rough peak of rows that materialise (windows, heads, N, N) fp32 scores."""
    scores = windows * heads * n * n * 4
    bias = heads * n * n * 4
    if variant == "rpb-dense":
        return int((4 if train else 2.5) * scores) + bias
    if variant == "rpb-sdpa" and device.type == "cpu" and train:  # may fall back to the math path
        return 4 * scores + bias
    return 3 * bias


def _attention_job(layer: WindowAttention, call: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, train: bool, describe: Callable[[], str]) -> Job:
    """Inference: the engine's steady state (positional terms cached). Training: forward + backward,
    positional factors / bias recomputed every step, as the engine does."""
    if not train:
        layer.eval()

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return call(q, k, v)

        return Job(forward, layer.clear_cache, describe)
    layer.train()
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    grad = torch.ones_like(q)

    def step() -> torch.Tensor:
        layer.zero_grad(set_to_none=True)
        q.grad = k.grad = v.grad = None
        out = call(q, k, v)
        out.backward(grad)
        return out.detach()

    return Job(step, layer.clear_cache, describe)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention() -> Callable:
    """torch.compile(flex_attention), once per process; without compile flex is unfused (scores materialised)."""
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention.flex_attention import flex_attention

    # One graph per window size (and per backward): dynamo's default limit of 8 would silently
    # fall back to the unfused eager path after that, mislabelling the rows.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
    return torch.compile(flex_attention, dynamic=False)


def _flex_job(layer: WindowAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, train: bool) -> Job:
    """RPB through torch's flex_attention (compiled): the bias is looked up inside the fused kernel.

    The score_mod recomputes the index of `relative_position_index` from the
    token numbers, so no (N, N) tensor is built.
    """
    flex = compiled_flex_attention()
    table, ws = layer.relative_position_bias, layer.window_size
    span, scale = 2 * ws - 1, 1.0 / math.sqrt(layer.head_dim)

    def score_mod(score, b, h, q_idx, kv_idx):  # noqa: ANN001 - traced by torch.compile
        dy = kv_idx // ws - q_idx // ws + ws - 1
        dx = kv_idx % ws - q_idx % ws + ws - 1
        return score + table[h, dy * span + dx]

    return _attention_job(layer, lambda q, k, v: flex(q, k, v, score_mod=score_mod, scale=scale), q, k, v, train,
                          lambda: "flex_attention (compiled)")


def _profiled_cuda_kernels(fn: Callable[[], Any]) -> list[str]:
    """Names of the CUDA kernels one call launched (to confirm which attention kernel really ran)."""
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


def attention_kernel_family(name: str) -> str | None:
    """Which attention implementation a CUDA kernel name belongs to: cudnn, flash, efficient, or None.

    cuDNN's fused attention kernels can carry "flash" in their generated names, so cuDNN is recognised
    first; PyTorch's memory-efficient kernels are CUTLASS "fmha" kernels.
    """
    low = name.lower()
    if "cudnn" in low:
        return "cudnn"
    if "flash" in low:
        return "flash"
    if "fmha" in low or "mem_eff" in low or "efficient_attention" in low:
        return "efficient"
    return None


def profile_note(row_kernel: str, names: list[str]) -> tuple[str, list[str]]:
    """(note for the row, attention kernels seen) from one profiled call: which family ran, and whether it
    is the one the row's kernel name claims (sdpa:flash, sdpa:cudnn, sdpa:efficient, flash_attn)."""
    seen = [nm for nm in names if attention_kernel_family(nm)]
    families = sorted({attention_kernel_family(nm) for nm in seen})  # type: ignore[type-var]
    if not families:
        return "profiler: no fused attention kernel ran", seen
    claimed = (row_kernel.split() or [""])[0].removeprefix("sdpa:").replace("flash_attn", "flash")
    note = f"profiler: {'+'.join(families)} kernel ran"
    if claimed in ("flash", "cudnn", "efficient") and claimed not in families:
        note += f" (row says {row_kernel})"
    return note, seen


#: Rows whose kernels the profiler confirms on CUDA: RIB's fused path and one RPB (bias) row.
PROFILED_VARIANTS = ("rib", "rpb-sdpa")


def attention_variants(opts: Options, device: torch.device, dtype: torch.dtype) -> list[tuple[str, str, str]]:
    """(variant, positional, kernel request) rows of each window, rib first."""
    rows = [("rib", "RIB", "auto")]
    if opts.all_kernels:
        rows += [(f"rib[{k}]", "RIB", k) for k in available_kernels(device)]
    rows += [("rpb-dense", "RPB", "math"), ("rpb-sdpa", "RPB", "sdpa"), ("rpb-flex", "RPB", "flex"),
             ("nope", "NoPE", "auto")]
    return rows


def run_attention(opts: Options, shape: CoreShape, device: torch.device, dtype: torch.dtype,
                  env: dict[str, Any], progress: Progress) -> list[AttentionRow]:
    """The attention table: every variant at every window size, same tokens and inputs."""
    out_rows: list[AttentionRow] = []
    tol = TOLERANCE[dtype]
    for ws in opts.windows or []:
        n, windows = ws * ws, windows_for(ws)
        progress(f"attention: window {ws} ({windows} windows x {n} tokens, {'train' if opts.train else 'forward'})")
        q, k, v = core_inputs(shape, ws, device, dtype, opts.seed)
        jobs: dict[str, Job] = {}
        rows: dict[str, AttentionRow] = {}
        budget = free_memory_bytes(device) * MEMORY_SHARE
        for variant, positional, kernel in attention_variants(opts, device, dtype):
            row = AttentionRow(window=ws, variant=variant, dtype=dtype_name(dtype), train=opts.train)
            rows[variant] = row
            need = _estimate_bytes(variant, windows, shape.heads, n, opts.train, device)
            if need > budget:
                row.skipped = f"skipped: needs ~{need / 2**30:.1f} GiB, {budget / 2**30:.1f} GiB allowed"
                continue
            layer = make_layer(shape, ws, positional, device, opts.seed, opts.corrupt_rib and positional == "RIB")
            if kernel == "flex":
                if not opts.flex:
                    row.skipped = ("skipped in --quick: compiling flex_attention takes seconds per window"
                                   if opts.quick else "skipped: not requested")
                    continue
                jobs[variant] = _flex_job(layer, q, k, v, opts.train)
            else:
                layer.kernel, layer.strategy = kernel, "concat"
                jobs[variant] = _attention_job(layer, layer._core, q, k, v, opts.train,
                                               lambda layer=layer: layer.last_kernel or "")
        outputs: dict[str, torch.Tensor] = {}

        def keep(name: str, out: Any) -> None:
            rows[name].kernel = jobs[name].describe()
            if name.startswith("rpb") and isinstance(out, torch.Tensor):
                outputs[name] = out[:1].float()

        measure(jobs, rows, device, opts, keep)  # type: ignore[arg-type]
        # The checks after the timing are guarded one by one: a failure becomes a note, the timed rows stay.
        for name, out in outputs.items():  # every RPB form must compute the same thing
            if name != "rpb-dense" and "rpb-dense" in outputs:
                try:
                    err = (out - outputs["rpb-dense"]).abs().max().item()
                    if not err <= tol:
                        rows[name].note = f"output differs from rpb-dense by {err:.2g}"
                except Exception as exc:
                    rows[name].note = f"comparison with rpb-dense failed: {_failure(exc)}"
        for name in PROFILED_VARIANTS if device.type == "cuda" else ():
            if name not in jobs or rows[name].skipped:
                continue
            try:
                rows[name].note, seen = profile_note(rows[name].kernel, _profiled_cuda_kernels(jobs[name].fn))
                env.setdefault("profiler_attention_kernels", {}).setdefault(str(ws), {})[name] = seen
            except Exception as exc:
                rows[name].note = f"profiler failed: {_failure(exc)}"
        out_rows += rows.values()
        del jobs, q, k, v, outputs
        release_memory(device)
    return out_rows


# ---- whole network ------------------------------------------------------------------


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision as `ribsr upscale` runs it: fp32 weights, attention operands in dtype."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _kernels_ran(model: torch.nn.Module) -> str:
    report = attention_report(model)
    return f"{'+'.join(report['kernels']) or '-'} [{'+'.join(str(s) for s in report['strategies'])}]"


def run_network(opts: Options, device: torch.device, dtype: torch.dtype, progress: Progress,
                preset: str | None = None) -> list[NetworkRow]:
    """RIB vs RPB in the same architecture: inference latency/memory, and a training step with --train."""
    name, arch = resolve_preset(preset or opts.preset)
    scale = arch["upscaling_factor"]
    out_w, out_h = opts.size or (1280, 720)
    in_w, in_h = -(-out_w // scale), -(-out_h // scale)
    # attn_type label -> (positional scheme, RIB strategy). On CPU the engine's default RIB path
    # materialises the bias (faster there), so the paper's concatenated form gets its own row.
    variants = [("RIB", "RIB", "auto"), ("RPB", "RPB", "auto")]
    if device.type == "cpu":
        variants.insert(1, ("RIB-concat", "RIB", "concat"))
    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.rand((1, 3, in_h, in_w), generator=gen).to(device)
    rows: list[NetworkRow] = []

    def build(positional: str, strategy: str) -> torch.nn.Module:
        torch.manual_seed(opts.seed)
        model = build_model(dict(arch, attn_type=positional)).to(device)
        return configure_attention(model, strategy=strategy)

    progress(f"network: {name} {'+'.join(v[0] for v in variants)}, inference on {in_w}x{in_h} -> {out_w}x{out_h}")
    jobs: dict[str, Job] = {}
    named: dict[str, NetworkRow] = {}
    for label, positional, strategy in variants:
        model = build(positional, strategy).eval()

        def infer(model: torch.nn.Module = model) -> torch.Tensor:
            with torch.no_grad(), _autocast(device, dtype):
                return model(x)

        jobs[label] = Job(infer, lambda m=model: configure_attention(m), lambda m=model: _kernels_ran(m))
        named[label] = NetworkRow(preset=name, attn_type=label, input=f"{in_w}x{in_h}", train=False)
    _measure_network(jobs, named, device, opts)
    rows += named.values()
    del jobs
    release_memory(device)
    if opts.train:
        batch, patch = opts.batch or 4, opts.patch or 64
        progress(f"network: {name} training step, batch {batch} of {patch}x{patch} (L1, AdamW)")
        xb = torch.rand((batch, 3, patch, patch), generator=gen).to(device)
        yb = torch.rand((batch, 3, patch * scale, patch * scale), generator=gen).to(device)
        jobs, named = {}, {}
        for label, positional, strategy in variants:
            model = build(positional, strategy).train()
            optim = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model: torch.nn.Module = model, optim: torch.optim.Optimizer = optim) -> torch.Tensor:
                optim.zero_grad(set_to_none=True)
                with _autocast(device, dtype):
                    loss = F.l1_loss(model(xb).float(), yb)
                loss.backward()
                optim.step()
                return loss.detach()

            jobs[label] = Job(step, describe=lambda m=model: _kernels_ran(m))
            named[label] = NetworkRow(preset=name, attn_type=label, input=f"{batch}x{patch}x{patch}", train=True)
        _measure_network(jobs, named, device, opts)
        rows += named.values()
        del jobs
        release_memory(device)
    return rows


def _measure_network(jobs: dict[str, Job], rows: dict[str, NetworkRow], device: torch.device, opts: Options) -> None:
    def keep(name: str, _out: Any) -> None:
        rows[name].kernel = jobs[name].describe()

    # The first network call mostly builds positional caches, which the memory call pays anyway;
    # --quick skips the separate warm-up (not on CUDA, whose first call also initialises libraries).
    measure(jobs, rows, device, opts, keep, warmup=not (opts.quick and device.type == "cpu"))  # type: ignore[arg-type]


# ---- the whole run ------------------------------------------------------------------


def busy_warning(env: dict[str, Any]) -> str:
    """A warning when other processes already use the cores this run's threads need.

    OpenMP threads wait for each other at every op; when one is descheduled the
    others spin, so on an oversubscribed machine 2 threads can be several times
    slower than 1, and noisy. Timings then say more about the neighbours.
    """
    load, cores, threads = env.get("load_avg_1m"), env.get("cpu_count") or os.cpu_count() or 1, env["threads"]
    if env["device"] != "cpu" or load is None or load + threads <= cores + 0.5:
        return ""
    hint = " (try --threads 1)" if threads > 1 else ""
    return (f"machine busy: load {load:.1f} on {cores} cores before this run; with {threads} thread(s) the CPU "
            f"timings are noisy and can be several times slower{hint}")


def auto_threads(device: torch.device) -> tuple[int, str]:
    """torch's thread count, lowered to the cores other processes leave free (OpenMP's cliff, above)."""
    current, cores = torch.get_num_threads(), os.cpu_count() or 1
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return current, "torch default"
    load = os.getloadavg()[0]
    free = int(cores - load + 0.5)
    if free >= current:
        return current, "torch default"
    return max(1, free), f"auto: load {load:.1f} on {cores} cores"


def run(opts: Options, progress: Progress | None = None) -> Result:
    """Check, then the attention table, then the network table. Raises RibMismatch before any timing."""
    say = progress or (lambda _msg: None)
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    preset, arch = resolve_preset(opts.preset)
    shape = CoreShape.from_arch(arch)
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


# ---- reading the results ------------------------------------------------------------


def repeat_counts(rows: list[Timing]) -> int | dict[str, int] | None:
    """Timed repeats that ran: one count when every timed row had the same, else the range."""
    counts = sorted({len(r.times_ms) for r in rows if r.times_ms})
    if not counts:
        return None
    return counts[0] if len(counts) == 1 else {"min": counts[0], "max": counts[-1]}


@dataclass
class Comparison:
    """How one attention row compares with RIB (and RIB with the no-position floor)."""

    rpb_over_rib: float | None = None
    mem_rpb_over_rib: float | None = None
    rib_over_nope: float | None = None
    note: str = ""


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def slower_note(rpb_over_rib: float | None) -> str:
    """Plain words where RIB is not faster: 'slower' beyond 5 %, 'no clear difference' within it."""
    if rpb_over_rib is None or rpb_over_rib >= 1.05:
        return ""
    if rpb_over_rib > 0.95:
        return "no clear difference (within 5 %)"
    return f"RIB {1 / rpb_over_rib:.2f}x slower here"


def compare_attention(rows: list[AttentionRow]) -> list[Comparison]:
    """Per row: rpb/rib time and memory for RPB rows, rib/nope for RIB rows, and a plain note."""
    by_key = {(r.window, r.variant): r for r in rows}
    out = []
    for row in rows:
        rib, nope = by_key.get((row.window, "rib")), by_key.get((row.window, "nope"))
        c = Comparison(note=row.note)
        if row.variant.startswith("rpb") and rib is not None:
            c.rpb_over_rib = _ratio(row.ms_median, rib.ms_median)
            c.mem_rpb_over_rib = _ratio(row.peak_mb, rib.peak_mb)
            extra = slower_note(c.rpb_over_rib)
            if extra:
                c.note = f"{c.note}; {extra}" if c.note else extra
        elif row.variant.startswith("rib") and nope is not None:
            c.rib_over_nope = _ratio(row.ms_median, nope.ms_median)
        out.append(c)
    return out


def compare_network(rows: list[NetworkRow]) -> list[float | None]:
    """RPB time / this row's time, within the same (train, input) group."""
    rpb = {(r.train, r.input): r for r in rows if r.attn_type == "RPB"}
    return [_ratio(rpb[(r.train, r.input)].ms_median, r.ms_median) if (r.train, r.input) in rpb else None
            for r in rows]


def _span(values: list[float]) -> str:
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}x"


def summary(result: Result) -> str:
    """One line for -q and logs: rpb/rib ranges over windows, network ratios, the check."""
    parts = []
    comps = compare_attention(result.attention)
    for variant in ("rpb-dense", "rpb-sdpa", "rpb-flex"):
        ratios = [c.rpb_over_rib for r, c in zip(result.attention, comps)
                  if r.variant == variant and c.rpb_over_rib is not None]
        if ratios:
            parts.append(f"{variant}/rib {_span(ratios)}")
    for row, ratio in zip(result.network, compare_network(result.network)):
        if row.attn_type == "RIB" and ratio is not None:
            parts.append(f"network {'train' if row.train else 'inference'} RPB/RIB {ratio:.2f}x")
    env = result.env
    check = f"check {'ok' if result.check.ok else 'FAILED'} (max err {result.check.max_abs_err:.1e})"
    return f"{env['device']} {env['dtype']}: " + ", ".join(parts + [check])


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save_plot(result: Result, path: str | os.PathLike) -> None:
    """Latency and peak memory vs window size, one line per variant (log scale)."""
    if not plot_available():
        raise PlotUnavailable("--plot needs matplotlib: pip install 'ribsr[plot]' (or pip install matplotlib)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    variants = list(dict.fromkeys(r.variant for r in result.attention))
    for variant in variants:
        pts = [r for r in result.attention if r.variant == variant and r.ms_median is not None]
        if not pts:
            continue
        ws = [r.window for r in pts]
        ax_t.plot(ws, [r.ms_median for r in pts], marker="o", label=variant)
        ax_m.plot(ws, [max(r.peak_mb or 0.0, 1e-3) for r in pts], marker="o", label=variant)
    env = result.env
    mode = "train step" if any(r.train for r in result.attention) else "forward"
    windows = sorted({r.window for r in result.attention})
    for ax, label in ((ax_t, "median latency (ms)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xticks(windows)
        ax.set_xlabel("window size")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    ax_t.legend()
    fig.suptitle(f"RIB vs RPB window attention, {MAP_SIDE}x{MAP_SIDE} tokens, {mode} - "
                 f"{env['device_name']}, torch {env['torch']}, {env['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
