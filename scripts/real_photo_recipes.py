"""Score the real-photo models off the recipe they were chosen on: README's "Other recipes" table.

`ribsr eval --degrade real` is one point of the camera-like family; a model tuned to it could lose elsewhere.
This scores bicubic, the clean default, the shipped real model (and any candidate files) on `examples/` and
Set14 under the official recipe and five others that differ in blur, noise and JPEG quality, with
`ribsr eval`'s own code (`evaluation.evaluate`, `--degrade real:blur=S,noise=N,jpeg=Q`).

    python3 scripts/real_photo_recipes.py --scale 2 [--models clean real cam=runs/x/best.safetensors]
                                          [--json runs/real_photo_recipes_x2.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ribsr_cli.engine.runner import RunOptions, load_upscaler
from ribsr_cli.evaluation import discover_dataset, evaluate
from ribsr_cli.fileutil import atomic_write_text
from ribsr_cli.paths import REPO_ROOT, benchmarks_dir
from ribsr_cli.training.degrade import CHECK_RECIPES as RECIPES  # the six recipes (their one home)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, required=True)
    ap.add_argument("--models", nargs="+", default=["clean", "real"],
                    help="`-m` values, or NAME=FILE for a candidate; the first is the reference of the gain column")
    ap.add_argument("--sets", nargs="+", type=Path, default=[REPO_ROOT / "examples", benchmarks_dir() / "Set14"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scoring = RunOptions(device="cpu").for_scoring()
    methods = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        methods[name] = load_upscaler(path or name, args.scale, scoring)
    reference = next(iter(methods))
    sets = [discover_dataset(s) for s in args.sets]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, mode in RECIPES:
        for r in evaluate(sets, [args.scale], methods, degrade=mode).results:
            results.setdefault(label, {}).setdefault(r.dataset, {})[r.method] = round(r.psnr, 3)
    others = [m for m in methods if m != reference]
    head = (f"| recipe | set | bicubic | {' | '.join(methods)} | "
            + " | ".join(f"{m} − {reference}" for m in others) + " |")
    rows = [head, "|" + " --- |" * (head.count("|") - 1)]
    means: dict[str, list[float]] = {m: [] for m in others}
    for label, mode in RECIPES:
        for dataset, scores in results[label].items():
            gains = [scores[m] - scores[reference] for m in others]
            for m, g in zip(others, gains):
                means[m].append(g)
            rows.append(f"| {label} (`{mode}`) | {dataset} | {scores['bicubic']:.2f} | "
                        + " | ".join(f"{scores[m]:.2f}" for m in methods) + " | "
                        + " | ".join(f"{g:+.2f}" for g in gains) + " |")
    rows.append(f"| mean gain | | | {' | '.join('' for _ in methods)} | "
                + " | ".join(f"{sum(v) / len(v):+.3f}" for v in means.values()) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps({"scale": args.scale, "recipes": dict(RECIPES),
                                                 "models": args.models, "psnr_y": results}, indent=2) + "\n")
    print(f"x{args.scale}, PSNR-Y dB")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
