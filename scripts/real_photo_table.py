"""Print README's "Real photos" tables: clean vs real vs `--denoise 0.5` on degraded (and clean) inputs.

For every scale that ships a real model, each set is scored with `ribsr eval`'s own code
(`evaluation.evaluate`): the input degraded with `--degrade real`'s fixed recipe, and the official/bicubic
LR for the cost on clean inputs. Methods: bicubic, the clean default (`-m clean`), the `--denoise 0.5` mix and
the real model (`-m real`). Markdown goes to stdout, the full results as JSON to --json.

    python3 scripts/real_photo_table.py [--sets examples $RIBSR_SHARED/benchmarks/Set5 ...] [--scales 2,4]
                                        [--json runs/real_photo_table.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ribsr_cli.catalog import variant_model
from ribsr_cli.engine.runner import RunOptions, load_upscaler
from ribsr_cli.evaluation import discover_dataset, evaluate
from ribsr_cli.fileutil import atomic_write_text
from ribsr_cli.paths import REPO_ROOT, benchmarks_dir

METHODS = [("clean", "ribsr-s (clean)", {"model": "clean"}),
           ("denoise", "--denoise 0.5", {"model": None, "denoise": 0.5}),
           ("real", "ribsr-s-real", {"model": "real"})]
SCORING = RunOptions(device="cpu").for_scoring()  # what `ribsr eval` runs: fp32, whole images


def scores(sets: list[Path], scale: int, degrade: str) -> dict[str, dict[str, float]]:
    """{set: {method key: PSNR-Y}} with "bicubic" beside the three models."""
    found = [discover_dataset(s) for s in sets]
    methods = {key: load_upscaler(kwargs["model"], scale, SCORING, denoise=kwargs.get("denoise"))
               for key, _, kwargs in METHODS}
    report = evaluate(found, [scale], methods, degrade=degrade)
    table: dict[str, dict[str, float]] = {}
    for r in report.results:
        table.setdefault(r.dataset, {})[r.method] = round(r.psnr, 3)
    return table


def markdown(results: dict[int, dict[str, dict[str, dict[str, float]]]]) -> str:
    head = "| input | set | scale | bicubic | " + " | ".join(label for _, label, _ in METHODS) + " | real − clean |"
    rows = [head, "|" + " --- |" * (head.count("|") - 1)]
    for degrade, what in (("real", "degraded (`--degrade real`)"), ("none", "clean (official/bicubic LR)")):
        for scale, by_input in results.items():
            for dataset, r in by_input[degrade].items():
                cells = [f"{r[k]:.2f}" for k in ("bicubic", "clean", "denoise", "real")]
                rows.append(f"| {what} | {dataset} | ×{scale} | {' | '.join(cells)} | {r['real'] - r['clean']:+.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", type=Path, nargs="+",
                    default=[REPO_ROOT / "examples", benchmarks_dir() / "Set5", benchmarks_dir() / "Set14"])
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for scale in (int(s) for s in args.scales.split(",")):
        if variant_model("real", scale) is None:
            print(f"(no shipped real model for x{scale}: skipped)")
            continue
        results[scale] = {degrade: scores(args.sets, scale, degrade) for degrade in ("real", "none")}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
