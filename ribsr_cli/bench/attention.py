"""The attention table: every variant (RIB, RPB dense/SDPA/flex, no position) at every window size, on the
same tokens and inputs, each row through the engine's own `WindowAttention._core` (not a re-implementation),
and on CUDA the profiler's word on which fused kernel really ran.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from ribsr_cli.bench.core import TOLERANCE, CoreShape, core_inputs, make_layer, windows_for
from ribsr_cli.bench.options import Options, Progress
from ribsr_cli.bench.timing import AttentionRow, Job, failure_reason, measure, native_stderr_silenced, release_memory
from ribsr_cli.engine.attention import WindowAttention
from ribsr_cli.engine.kernels import available_kernels
from ribsr_cli.engine.runtime import free_memory_bytes, precision_name

#: Rows whose estimated memory exceeds this share of free memory are skipped, not attempted (no OOM kill).
MEMORY_SHARE = 0.6
#: Rows whose kernels the profiler confirms on CUDA: RIB's fused path and one RPB (bias) row.
PROFILED_VARIANTS = ("rib", "rpb-sdpa")


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

    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
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


def attention_variants(opts: Options, device: torch.device) -> list[tuple[str, str, str]]:
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
        for variant, positional, kernel in attention_variants(opts, device):
            row = AttentionRow(window=ws, variant=variant, dtype=precision_name(dtype), train=opts.train)
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
                    rows[name].note = f"comparison with rpb-dense failed: {failure_reason(exc)}"
        for name in PROFILED_VARIANTS if device.type == "cuda" else ():
            if name not in jobs or rows[name].skipped:
                continue
            try:
                rows[name].note, seen = profile_note(rows[name].kernel, _profiled_cuda_kernels(jobs[name].fn))
                env.setdefault("profiler_attention_kernels", {}).setdefault(str(ws), {})[name] = seen
            except Exception as exc:
                rows[name].note = f"profiler failed: {failure_reason(exc)}"
        out_rows += rows.values()
        del jobs, q, k, v, outputs
        release_memory(device)
    return out_rows
