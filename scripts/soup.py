"""Average the shipped checkpoints of two or more runs into a run folder that `ribsr export` ships (a "model soup").

Why: the real-photo fine-tunes all start from the same clean weights, so they sit in one basin and their
uniform average is a working network (the observation behind Wortsman et al. 2022, "Model soups", and the same
one `--denoise` relies on). Runs trained on different degradation mixes are each best on their own kind of
damage; their average kept most of each strength and lost least on lightly damaged input
(`scripts/real_photo_recipes.py`; README "Other recipes").

    python3 scripts/soup.py runs/ribsr-s-real-x2-v4 runs/ribsr-s-real-x2 --out runs/ribsr-s-real-x2-soup
    python3 -m ribsr_cli export runs/ribsr-s-real-x2-soup --name ribsr-s-real-x2

The soup's `best.safetensors` carries the summed steps and minutes, the ingredients (`soup_of`: each with its
degradation overrides, and a soup among them with its own ingredients), and its own degraded-Set5 score (as a
run's validation would report it); `config.json` is the first run's plus `soup_of`, without the first run's
degradation ranges (the ingredients may have trained on different ones). A soup may be an ingredient: the
average of a soup and a run weighs the run by a half and each of the soup's two ingredients by a quarter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ribsr_cli.engine.checkpoint import load_model, save_model
from ribsr_cli.fileutil import atomic_write_text
from ribsr_cli.paths import benchmarks_dir
from ribsr_cli.training.checkpointing import BEST_FILE
from ribsr_cli.training.export import measure, pick_checkpoint, scoring_upscaler


def _ingredient(run: Path, provenance: dict, config: dict) -> dict:
    """What the soup records of one ingredient: its run, length and score, the degradation overrides it
    trained with, and, when the ingredient is itself a soup, that soup's own ingredients."""
    entry = {"run": run.name, "steps": provenance.get("steps"), "minutes": provenance.get("minutes"),
             "val_psnr_y": provenance.get("val_psnr_y")}
    if config.get("degradation_overrides"):
        entry["degradation_overrides"] = config["degradation_overrides"]
    if provenance.get("soup_of"):
        entry["soup_of"] = provenance["soup_of"]
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--benchmarks", type=Path, default=benchmarks_dir())
    args = ap.parse_args()
    if len(args.runs) < 2:
        ap.error("a soup needs two runs or more")
    configs = [json.loads((run / "config.json").read_text()) for run in args.runs]
    if len({(c["scale"], c.get("init_from"), c.get("degradation")) for c in configs}) != 1:
        ap.error("the runs must share scale, init_from and degradation (one basin, one kind of model)")
    models = [load_model(pick_checkpoint(run)) for run in args.runs]
    if any(m.config != models[0].config for m in models):
        ap.error("the runs' networks differ in architecture")
    states = [m.state_dict() for m in models]
    soup = models[0]
    with torch.no_grad():
        soup.load_state_dict({k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
                              if v.is_floating_point() else v for k, v in states[0].items()})
    provs = [m.provenance for m in models]  # type: ignore[attr-defined]
    ingredients = [_ingredient(run, p, c) for run, p, c in zip(args.runs, provs, configs)]
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / BEST_FILE
    provenance = dict(provs[0], steps=sum(int(p.get("steps") or 0) for p in provs),
                      minutes=round(sum(float(p.get("minutes") or 0) for p in provs), 1), soup_of=ingredients)
    save_model(soup, target, provenance)
    score = measure(scoring_upscaler(target, soup.scale), args.benchmarks, degrade="real")["Set5"]["psnr_y"]
    save_model(soup, target, dict(provenance, val_psnr_y=score, val_set="Set5", val_degradation="real"))
    config = dict(configs[0], out_dir=str(args.out), soup_of=ingredients)
    config.pop("degradation_overrides", None)  # the ingredients may differ: each records its own above
    config.get("extra", {}).pop("degradation_config", None)
    atomic_write_text(args.out / "config.json", json.dumps(config, indent=2) + "\n")
    print(f"{target}: average of {', '.join(i['run'] for i in ingredients)}; degraded Set5 {score:.3f} dB")


if __name__ == "__main__":
    main()
