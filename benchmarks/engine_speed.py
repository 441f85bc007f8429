"""Whole-network CPU speed of each RIB attention strategy and kernel, side by side in one run.

    python benchmarks/engine_speed.py [--preset SST-light-x4] [--size 128] [--repeats 3] [--threads 2] [--with-math]

Rows are interleaved (round-robin over configurations for every repeat) so
drift in machine load hits them alike. Prints median seconds, the ratio to the
plain concatenated-SDPA path without caching (the authors' formulation), the
kernels that ran, the cached positional tensors' size, and the max abs
difference of each output to the baseline's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ribsr_cli.engine import attention_report, build_model, configure_attention
from ribsr_cli.engine.attention import WindowAttention


def cached_mb(model: torch.nn.Module) -> float:
    total = 0
    for m in model.modules():
        if isinstance(m, WindowAttention):
            for _, value in m._cache.values():
                tensors = value if isinstance(value, tuple) else (value,)
                total += sum(t.numel() * t.element_size() for t in tensors)
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="SST-light-x4")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--with-math", action="store_true", help="also time the explicit math kernel (slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    x = torch.rand(1, 3, args.size, args.size)
    configs = [  # (label, kernel, strategy, cache)
        ("concat sdpa, no cache (reference form)", "sdpa", "concat", False),
        ("concat sdpa, cached factors", "sdpa", "concat", True),
        ("bias-as-mask sdpa, cached bias", "sdpa", "bias", True),
        ("auto (engine default)", "auto", "auto", True),
    ]
    if args.with_math:
        configs.append(("bias math, cached bias", "math", "bias", True))
    times: dict[str, list[float]] = {c[0]: [] for c in configs}
    outputs, kernels_ran, memory = {}, {}, {}
    with torch.no_grad():
        for label, kernel, strategy, cache in configs:  # warm-up: fills caches, records kernels
            configure_attention(model, kernel=kernel, strategy=strategy, cache=cache)
            outputs[label] = model(x)
            report = attention_report(model)
            kernels_ran[label] = f"{'+'.join(report['kernels'])} [{'+'.join(report['strategies'])}]"
            memory[label] = cached_mb(model)
        for _ in range(args.repeats):
            for label, kernel, strategy, cache in configs:
                configure_attention(model, kernel=kernel, strategy=strategy, cache=cache)
                model(x)  # refill the cache that configure_attention cleared (not timed)
                start = time.perf_counter()
                model(x)
                times[label].append(time.perf_counter() - start)
    base_label = configs[0][0]
    base = statistics.median(times[base_label])
    print(f"{args.preset} forward, input {args.size}x{args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(f"{'configuration':42s} {'median s':>9s} {'speed-up':>9s} {'cache MB':>9s} {'max|d|':>9s}  kernels")
    for label, *_ in configs:
        med = statistics.median(times[label])
        diff = (outputs[label] - outputs[base_label]).abs().max().item()
        print(f"{label:42s} {med:9.3f} {base / med:8.2f}x {memory[label]:9.0f} {diff:9.1e}  {kernels_ran[label]}")


if __name__ == "__main__":
    main()
