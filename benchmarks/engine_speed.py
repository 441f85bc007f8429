"""Whole-network CPU speed of each precision x RIB attention strategy, side by side in one run.

    python benchmarks/engine_speed.py [--case sst-light-128 ribsr-s-512] [--repeats 5] [--threads 1]

Two networks, as issue 14 asks: SST-light x4 (random weights, authors' layout) on a 128x128 input, and
the shipped `ribsr-s-x2` on a 512x512 crop of examples/astronaut.png. Configurations:

- ``fp32 concat, no cache, NCHW``: concatenated-SDPA in fp32 recomputing the RIB factors every forward on
  NCHW feature maps, the stand-in for the authors' formulation (1.0-1.1x of their code, issue 14) and the
  baseline of ``speed-up``;
- fp32 and bf16 (CPU autocast, attention core in bf16, as `ribsr upscale --precision bf16` runs it) with
  ``concat`` (cached factors), ``bias`` (cached dense mask) and ``auto`` (the engine's choice);
- ``default``: what `ribsr upscale` runs here (`--precision auto`, strategy auto, the runner's memory
  format: channels-last on a CPU), and the same on NCHW maps (the 0.3.0 layout) to show what the layout buys.
Every row but the two NCHW ones stores feature maps as the runner does (`runtime.pick_memory_format`).

Timing: every repeat runs each configuration once, round-robin (interleaved), so drift in machine load
hits them alike; the median of `--repeats` is printed. Peak RSS: the high-water mark of a process is not
per configuration, so each configuration also runs once in a fresh subprocess (one warm-up forward and one
timed-path forward) and reports its VmHWM; that includes the interpreter and torch (~0.3 GB).
``max|d|`` is the largest absolute difference of the raw output to the fp32 baseline's; ``PSNR`` compares
the outputs clamped to [0, 1] (what an image gets), in dB.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CASES = ("sst-light-128", "ribsr-s-512")
#: (label, precision, strategy, cache positional tensors, feature-map layout: "nchw" or the runner's choice)
CONFIGS = (
    ("fp32 concat, no cache, NCHW (authors' form)", "fp32", "concat", False, "nchw"),
    ("fp32 concat, cached factors", "fp32", "concat", True, "runner"),
    ("fp32 bias, cached", "fp32", "bias", True, "runner"),
    ("fp32 auto", "fp32", "auto", True, "runner"),
    ("bf16 concat", "bf16", "concat", True, "runner"),
    ("bf16 bias, cached", "bf16", "bias", True, "runner"),
    ("default, but NCHW (0.3.0 layout)", "auto", "auto", True, "nchw"),
    ("default (precision auto, strategy auto)", "auto", "auto", True, "runner"),
)


def load_case(case: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The network and input of a case, the same in every process (fixed seed, a real photo)."""
    from PIL import Image

    from ribsr_cli.engine import build_model
    from ribsr_cli.engine.registry import resolve

    torch.manual_seed(0)
    if case == "sst-light-128":
        model, size = build_model("SST-light-x4"), 128
    elif case == "ribsr-s-512":
        model, size = resolve("ribsr-s-x2", 2, None, device="cpu").network, 512
    else:
        raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    photo = np.asarray(Image.open(REPO / "examples" / "astronaut.png").convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(photo[:size, :size]).permute(2, 0, 1)[None].contiguous()
    return model.eval(), x


def configure(model: torch.nn.Module, precision: str, strategy: str, cache: bool, layout: str):
    """Set the model up as `ribsr upscale` would for this precision/strategy; returns the autocast context.
    `layout` "nchw" then overrides the runner's memory format (`runtime.pick_memory_format`: channels-last)."""
    from ribsr_cli.engine import configure_attention
    from ribsr_cli.engine.runner import LoadedModel, RunOptions, Upscaler

    upscaler = Upscaler(LoadedModel.of(model), RunOptions(device="cpu", precision=precision, strategy=strategy))
    configure_attention(model, cache=cache)
    if layout == "nchw":
        model.use_memory_format(torch.contiguous_format)
    return upscaler.context


def forward(model, x, autocast) -> torch.Tensor:
    with torch.inference_mode(), autocast:
        return model(x).float()


def rss_child(case: str, index: int, threads: int) -> None:
    """Subprocess body: one configuration, two forwards, print peak RSS in MB."""
    torch.set_num_threads(threads)
    model, x = load_case(case)
    _, precision, strategy, cache, layout = CONFIGS[index]
    autocast = configure(model, precision, strategy, cache, layout)
    forward(model, x, autocast)
    forward(model, x, autocast)
    print(json.dumps({"peak_rss_mb": own_peak_rss_mb()}))


def own_peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through
    fork and exec, so every child of a 1.7 GB parent would report 1.7 GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(case: str, index: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", case, str(index), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def run_case(case: str, repeats: int, threads: int, with_rss: bool) -> None:
    from ribsr_cli.engine import attention_report
    from ribsr_cli.engine.runtime import auto_precision

    model, x = load_case(case)
    outputs, ran, times = {}, {}, {c[0]: [] for c in CONFIGS}
    for label, precision, strategy, cache, layout in CONFIGS:  # warm-up: fills caches, records what ran
        autocast = configure(model, precision, strategy, cache, layout)
        outputs[label] = forward(model, x, autocast)
        report = attention_report(model)
        prec = auto_precision(torch.device("cpu")) if precision == "auto" else precision
        ran[label] = f"{prec} {'+'.join(report['kernels'])} [{'+'.join(report['strategies'])}]"
    for _ in range(repeats):
        for label, precision, strategy, cache, layout in CONFIGS:
            autocast = configure(model, precision, strategy, cache, layout)
            forward(model, x, autocast)  # refill the caches that configuring cleared (not timed)
            start = time.perf_counter()
            forward(model, x, autocast)
            times[label].append(time.perf_counter() - start)
    rss = {c[0]: peak_rss(case, i, threads) if with_rss else float("nan") for i, c in enumerate(CONFIGS)}
    base_label = CONFIGS[0][0]
    base = statistics.median(times[base_label])
    print(f"\n{case}: input {tuple(x.shape[-2:])}, torch {torch.__version__}, {threads} CPU thread(s), "
          f"median of {repeats} interleaved repeats")
    print(f"{'configuration':46s} {'median s':>9s} {'speed-up':>9s} {'peak RSS MB':>12s} {'max|d|':>9s} "
          f"{'PSNR dB':>8s}  ran (precision kernel [strategies])")
    for label, *_ in CONFIGS:
        med = statistics.median(times[label])
        diff = (outputs[label] - outputs[base_label]).abs().max().item()
        print(f"{label:46s} {med:9.3f} {base / med:8.2f}x {rss[label]:12.0f} {diff:9.1e} "
              f"{psnr(outputs[label], outputs[base_label]):8.1f}  {ran[label]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-rss", action="store_true", help="skip the per-configuration RSS subprocesses")
    ap.add_argument("--rss-child", nargs=2, metavar=("CASE", "INDEX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), args.threads)
        return
    torch.set_num_threads(args.threads)
    for case in args.case:
        run_case(case, args.repeats, args.threads, not args.no_rss)


if __name__ == "__main__":
    main()
