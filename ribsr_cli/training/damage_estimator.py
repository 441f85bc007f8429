"""Train the `engine.damage.DamageEstimator` a damage-conditioned network reads its damage with.

The estimator learns on exactly what the conditioned network is trained on: random HR crops of the prepared
pool, degraded on the fly by `training.degrade`'s camera model with a `--degradation-config` file, labelled
with the damage each sample drew (`degrade_batch_with_damage`). L1 on the vectors, AdamW, cosine decay; a
fixed, seeded held-out batch of the same kind scores it (mean absolute error per component, in the units
photographers read: blur px, noise levels, JPEG quality), and the official `--degrade real` recipe on the
validation set checks that it reads an independently made degradation.

    python3 -m ribsr_cli.training.damage_estimator --scale 2 \\
        --degradation-config scripts/degradation/conditioned-camera-x2.json --out runs/damage-estimator-x2

writes estimator.safetensors (the weights `ribsr train --damage-estimator` builds into a conditioned network)
and log.csv. One thread, minutes; no resume (a rerun starts over: it is cheap).

    python3 -m ribsr_cli.training.damage_estimator install runs/damage-estimator-x2-v2/estimator.safetensors \\
        runs/ribsr-sd-real-x2

puts a (better) estimator into a conditioned run that trained with another one. The network's own weights do
not depend on its estimator (a run tells it each sample's true damage; the frozen estimator only reads the
validation images), so this is exact: the run's files (best/ema.safetensors, last.pt) get the new estimator,
config.json records it, and best.safetensors' validation score is measured again with it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ribsr_cli.engine.damage import Damage, DamageEstimator, estimate_image_damage

ESTIMATOR_FILE = "estimator.safetensors"


def damage_batch(pool, rng: np.random.Generator, batch: int, lr_side: int, scale: int, ranges
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR float batch, damage vectors) of `batch` random crops of `lr_side` LR pixels."""
    from ribsr_cli.training.batches import make_batch_with_damage

    lr, _, damage = make_batch_with_damage(pool, rng, batch, lr_side, scale, "real", ranges)
    if damage is None:
        raise ValueError("the estimator needs camera-model damage only: set camera_prob 1 in the degradation config")
    return lr, damage


def component_errors(predicted: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Mean absolute error per component, in `Damage` units (blur px, noise levels, JPEG quality points)."""
    p = [Damage.from_vector(v) for v in predicted.clamp_min(0)]
    t = [Damage.from_vector(v) for v in true]
    return {key: float(np.mean([abs(getattr(a, key) - getattr(b, key)) for a, b in zip(p, t)]))
            for key in ("blur", "noise", "jpeg")}


def official_recipe_reading(estimator: DamageEstimator, val_dir: Path, scale: int) -> list[str]:
    """What the estimator reads on each validation image degraded with the official eval recipe."""
    from ribsr_cli.evaluation import discover_dataset, load_pair
    from ribsr_cli.pixels import to_rgb

    dataset = discover_dataset(val_dir)
    lines = []
    for hr_file in dataset.hr_files:
        lr, _ = load_pair(dataset, hr_file, scale, degrade="real")[:2]
        read = estimate_image_damage(estimator, to_rgb(lr))
        lines.append(f"{hr_file.stem}: {Damage.from_vector(read).describe()}")
    return lines


def train_estimator(data_dir: Path, scale: int, ranges, out: Path, minutes: float, batch: int = 32,
                    lr_side: int = 64, peak_lr: float = 2e-3, seed: int = 0, val_dir: Path | None = None,
                    init: Path | None = None, log=print) -> Path:
    """Train for `minutes` (cosine over the clock) and write out/estimator.safetensors; returns its path.
    `init`: an estimator file to start from (e.g. an earlier one, when the labels' meaning changed)."""
    from safetensors.torch import save_file

    from ribsr_cli.fileutil import atomic_write_text
    from ribsr_cli.training.pool import HRPool

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    pool = HRPool(data_dir)
    held_out = damage_batch(pool, np.random.default_rng(seed + 10_000), 256, lr_side, scale, ranges)
    rng = np.random.default_rng(seed)
    model = DamageEstimator()
    if init is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(init)))
        log(f"started from {init}")
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=1e-4)
    start, step, rows = time.monotonic(), 0, []
    budget = minutes * 60
    while (elapsed := time.monotonic() - start) < budget:
        progress = elapsed / budget
        for group in opt.param_groups:
            group["lr"] = peak_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        lr, damage = damage_batch(pool, rng, batch, lr_side, scale, ranges)
        loss = F.l1_loss(model(lr), damage)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            model.eval()
            with torch.no_grad():
                errors = component_errors(model(held_out[0]), held_out[1])
            model.train()
            rows.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": round(loss.item(), 5),
                         **{f"mae_{k}": round(v, 4) for k, v in errors.items()}})
            log(f"step {step} {elapsed / 60:.1f} min loss {loss.item():.4f} held-out MAE "
                + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()))
    model.eval()
    with torch.no_grad():
        final = component_errors(model(held_out[0]), held_out[1])
    log("final held-out MAE " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))
    path = out / ESTIMATOR_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "ribsr-damage-estimator/1", "scale": str(scale), "steps": str(step),
                        "held_out_mae": json.dumps({k: round(v, 4) for k, v in final.items()})})
    path.chmod(0o644)  # safetensors creates the file private; weights are meant to be shared
    with open(out / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["step"])
        writer.writeheader()
        writer.writerows(rows)
    if val_dir is not None:
        readings = official_recipe_reading(model, val_dir, scale)
        from ribsr_cli.training.degrade import OFFICIAL_RECIPE

        truth = OFFICIAL_RECIPE.damage(scale)
        log(f"official recipe is {truth.describe()}; read as:\n  " + "\n  ".join(readings))
        atomic_write_text(out / "official_recipe_reading.txt",
                          f"truth: {truth.describe()}\n" + "\n".join(readings) + "\n")
    return path


def install(estimator_file: Path, run: Path, log=print) -> float | None:
    """Put `estimator_file` into the conditioned run's best.safetensors, ema.safetensors and last.pt (each
    rewritten atomically), record it in config.json, and re-measure best's validation score (returned)."""
    from safetensors.torch import load_file

    from ribsr_cli.engine.checkpoint import PROVENANCE_KEY, load_model, read_state_dict, save_model
    from ribsr_cli.fileutil import atomic_path, atomic_write_text
    from ribsr_cli.training.checkpointing import BEST_FILE, EMA_FILE, STATE_FILE
    from ribsr_cli.training.validation import load_validation, validate

    new = {f"estimator.{k}": v for k, v in load_file(str(estimator_file)).items()}
    config_path = run / "config.json"
    config = json.loads(config_path.read_text())
    score = None
    for name in (EMA_FILE, BEST_FILE):
        path = run / name
        if not path.is_file():
            continue
        model = load_model(path)
        if not model.config.damage_channels:
            raise ValueError(f"{path}: not a damage-conditioned network")
        try:
            model.load_state_dict({**model.state_dict(), **new})
        except RuntimeError as exc:
            raise ValueError(f"{estimator_file}: does not fit {path}'s estimator ({str(exc).splitlines()[-1].strip()})") from None
        provenance = dict(json.loads(read_state_dict(path)[1].get(PROVENANCE_KEY, "{}")),
                          damage_estimator=str(estimator_file))
        if name == BEST_FILE and config.get("val_dir"):
            pairs = load_validation(config["val_dir"], int(config["scale"]), config.get("degradation", "bicubic"))
            score = validate(model, pairs, int(config["scale"]), "cpu")
            log(f"{path}: validation {provenance.get('val_psnr_y')} -> {score:.4f} dB with the new estimator")
            provenance["val_psnr_y"] = round(score, 4)
        save_model(model, path, provenance)
    state_path = run / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        for part in ("model", "ema"):
            state[part].update(new)
        if state.get("config"):  # what a resume reads back as the run's estimator (trainer._keep_started_choices)
            state["config"] = json.dumps({**json.loads(state["config"]), "damage_estimator": str(estimator_file)})
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)
    config["damage_estimator"] = str(estimator_file)
    atomic_write_text(config_path, json.dumps(config, indent=2))
    return score


def main(argv: list[str] | None = None) -> None:
    import sys

    from ribsr_cli.training.degrade import degradation_config, read_degradation_overrides

    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["install"]:
        installer = argparse.ArgumentParser(prog="damage_estimator install", description=install.__doc__)
        installer.add_argument("estimator", type=Path)
        installer.add_argument("run", type=Path)
        opts = installer.parse_args(args_in[1:])
        install(opts.estimator, opts.run)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--degradation-config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--val", type=Path, default=None, help="a benchmark folder to read the official recipe on")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--init", type=Path, default=None, help="an estimator file to start from")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--crop", type=int, default=64, help="LR crop side (engine.damage.ESTIMATE_CROP reads 128)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(args_in)
    torch.set_num_threads(args.threads)
    ranges = degradation_config(read_degradation_overrides(args.degradation_config))
    train_estimator(args.data, args.scale, ranges, args.out, args.minutes, batch=args.batch, lr_side=args.crop,
                    peak_lr=args.lr, val_dir=args.val, init=args.init)


if __name__ == "__main__":
    main()
