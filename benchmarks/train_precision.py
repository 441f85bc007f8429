"""bf16 autocast vs fp32 training on the CPU: same seed, same batches, loss curves and step times side by side.

    python benchmarks/train_precision.py [--steps 30] [--rounds 2] [--batch 4] [--patch 48] [--threads 1]

Trains `ribsr-s` x2 from scratch on a tiny pool built from examples/ (as tests/test_training.py does) with
`TrainConfig.precision` "fp32" and "auto" (bf16 autocast where the CPU has native bf16), alternating
A, B, A, B for `--rounds` so machine-load drift hits both. Prints the median step time of each, their ratio,
and the loss gap: the mean and largest |loss_bf16 - loss_fp32| over the steps of the first round, and the
mean loss over the last third of the run in each precision.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(pool: Path, out: Path, precision: str, args) -> tuple[list[float], list[float]]:
    """(losses, seconds per step) of one training run from seed 0."""
    from ribsr_cli.training.config import TrainConfig
    from ribsr_cli.training.trainer import train

    losses, stamps = [], [time.perf_counter()]

    def on_step(step: int, loss: float) -> None:
        losses.append(float(loss))
        stamps.append(time.perf_counter())

    cfg = TrainConfig(out_dir=str(out), data_dir=str(pool), val_dir="", total_steps=args.steps, warmup_steps=5,
                      val_every=10**9, ckpt_minutes=10**6, patch=args.patch, batch=args.batch, arch="ribsr-s",
                      scale=2, threads=args.threads, precision=precision)
    train(cfg, resume=False, log=lambda _: None, device="cpu", on_step=on_step)
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # from step 2: the first includes set-up
    return losses, steps


def main() -> None:
    from ribsr_cli.engine.runtime import cpu_native_bf16
    from ribsr_cli.training.prepare import prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        prepare(REPO / "examples", pool, downscale=1, benchmark_dirs=[], log=lambda _: None)
        losses: dict[str, list[float]] = {}
        times: dict[str, list[float]] = {"fp32": [], "auto": []}
        for r in range(args.rounds):
            for precision in ("fp32", "auto"):
                run_losses, run_times = run_once(pool, Path(tmp) / f"{precision}{r}", precision, args)
                losses.setdefault(precision, run_losses)
                times[precision] += run_times
    fp32, bf16 = losses["fp32"], losses["auto"]
    gaps = [abs(a - b) for a, b in zip(fp32, bf16)]
    tail = max(1, len(fp32) // 3)
    t32, t16 = statistics.median(times["fp32"]), statistics.median(times["auto"])
    print(f"ribsr-s x2, batch {args.batch} of {args.patch}x{args.patch}, {args.steps} steps x {args.rounds} rounds, "
          f"{args.threads} thread(s); native bf16: {cpu_native_bf16()}")
    print(f"median step: fp32 {t32:.3f} s, auto {t16:.3f} s -> {t32 / t16:.2f}x")
    print(f"loss |bf16 - fp32| per step: mean {statistics.mean(gaps):.5f}, max {max(gaps):.5f}; "
          f"last-third mean loss fp32 {statistics.mean(fp32[-tail:]):.5f}, bf16 {statistics.mean(bf16[-tail:]):.5f}")
    print("losses fp32:", " ".join(f"{v:.4f}" for v in fp32))
    print("losses bf16:", " ".join(f"{v:.4f}" for v in bf16))


if __name__ == "__main__":
    main()
