"""The network table: RIB against RPB in the same architecture, whole networks, inference and (with
--train) one training step, run under the runtime's context exactly as `ribsr upscale` and training run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from ribsr_cli.bench.options import Options, Progress, resolve_preset
from ribsr_cli.bench.timing import Job, NetworkRow, measure, release_memory
from ribsr_cli.engine import attention_report, build_model, configure_attention
from ribsr_cli.engine.runtime import run_context


def _kernels_ran(model: torch.nn.Module) -> str:
    report = attention_report(model)
    return f"{'+'.join(report['kernels']) or '-'} [{'+'.join(str(s) for s in report['strategies'])}]"


def run_network(opts: Options, device: torch.device, dtype: torch.dtype, progress: Progress,
                preset: str | None = None) -> list[NetworkRow]:
    """RIB vs RPB in the same architecture: inference latency/memory, and a training step with --train."""
    name, config = resolve_preset(preset or opts.preset)
    scale = config.scale
    out_w, out_h = opts.size  # Options fills the defaults
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
        model = build_model(dataclasses.replace(config, attn_type=positional)).to(device)
        return configure_attention(model, strategy=strategy)

    progress(f"network: {name} {'+'.join(v[0] for v in variants)}, inference on {in_w}x{in_h} -> {out_w}x{out_h}")
    jobs: dict[str, Job] = {}
    named: dict[str, NetworkRow] = {}
    for label, positional, strategy in variants:
        model = build(positional, strategy).eval()

        def infer(model: torch.nn.Module = model) -> torch.Tensor:
            with torch.no_grad(), run_context(device, dtype):
                return model(x)

        jobs[label] = Job(infer, lambda m=model: configure_attention(m), lambda m=model: _kernels_ran(m))
        named[label] = NetworkRow(preset=name, attn_type=label, input=f"{in_w}x{in_h}", train=False)
    _measure_network(jobs, named, device, opts)
    rows += named.values()
    del jobs
    release_memory(device)
    if opts.train:
        batch, patch = opts.batch, opts.patch
        progress(f"network: {name} training step, batch {batch} of {patch}x{patch} (L1, AdamW)")
        xb = torch.rand((batch, 3, patch, patch), generator=gen).to(device)
        yb = torch.rand((batch, 3, patch * scale, patch * scale), generator=gen).to(device)
        jobs, named = {}, {}
        for label, positional, strategy in variants:
            model = build(positional, strategy).train()
            optim = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model: torch.nn.Module = model, optim: torch.optim.Optimizer = optim) -> torch.Tensor:
                optim.zero_grad(set_to_none=True)
                with run_context(device, dtype):
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
