"""Ship a trained run: measure it with the eval protocol, copy its EMA weights into `weights/`, update the manifest.

    ribsr export runs/ribsr-s-x2 --name ribsr-s-x2 --default
    ribsr export runs/ribsr-s-real-x2 --name ribsr-s-real-x2   # a real-photo model
    ribsr export --remeasure ribsr-s-x2   # add degraded scores, weights untouched
    ribsr export --readme      # only re-render README's models table

(`python -m ribsr_cli.training.export ...` runs the same command.) The flags live in
`ribsr_cli/commands/export.py`; this module does the work.

The manifest entry records what a user needs to trust and reproduce the file:
architecture, parameter count, sha256, variant ("clean": bicubic-trained; "real": trained with
`--degradation real`, read from the run's config.json, never the scale's default), training data, steps,
wall time and hardware, Set5/Set14 PSNR-Y/SSIM-Y beside bicubic on the official LR (`metrics`) and on LR
made by `ribsr eval --degrade real`'s recipe (`metrics_degraded`), and CPU seconds per megapixel of input.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ribsr_cli.engine.checkpoint import load_model, save_model
from ribsr_cli.engine.runtime import cpu_model_name
from ribsr_cli.catalog import manifest, source_weights_dir, weights_dir
from ribsr_cli.errors import RibsrError
from ribsr_cli.fileutil import atomic_write_text, sha256_file
from ribsr_cli.training.checkpointing import BEST_FILE, EMA_FILE


class ExportError(RibsrError):
    """A run cannot be shipped as asked (no benchmarks to measure on, too large, wrong flags, unknown name)."""


TRAINING_DATA = ("83 freely licensed photographs from Debian packages (shared/training-photos.tsv), "
                 "Lanczos-halved, benchmark leak check passed")


def scoring_upscaler(model: Path | str, scale: int):
    """The model (a file or a shipped name) loaded once and run as `ribsr eval` runs it on the CPU."""
    from ribsr_cli.engine.runner import RunOptions, load_upscaler

    return load_upscaler(str(model), scale, RunOptions(device="cpu").for_scoring())


def measure(upscaler, benchmarks: Path, degrade: str = "none") -> dict:
    """PSNR-Y/SSIM-Y on Set5 and Set14 for the model (a `scoring_upscaler`) and bicubic.

    degrade "none": the official LR files (`metrics`); "real": LR from `degrade_for_eval` (`metrics_degraded`).
    """
    from ribsr_cli.evaluation import discover_dataset, evaluate

    scale = upscaler.loaded.scale
    sets = [discover_dataset(benchmarks / s) for s in ("Set5", "Set14") if (benchmarks / s).is_dir()]
    if not sets:
        raise ExportError(benchmarks, "no Set5/ or Set14/ folder; pass --benchmarks")
    report = evaluate(sets, [scale], {upscaler.name: upscaler}, degrade=degrade)
    metrics: dict = {}
    for r in report.results:
        key = "bicubic" if r.method == "bicubic" else "model"
        metrics.setdefault(r.dataset, {})[f"{key}_psnr_y" if key == "bicubic" else "psnr_y"] = round(r.psnr, 3)
        metrics[r.dataset][f"{key}_ssim_y" if key == "bicubic" else "ssim_y"] = round(r.ssim, 4)
    return metrics


def cpu_seconds_per_mp(model: torch.nn.Module, photo: Path, threads: int = 2) -> float:
    """Wall seconds per input megapixel for a whole-image fp32 CPU forward (median of 3)."""
    from PIL import Image

    from ribsr_cli.engine.tiling import upscale_image

    torch.set_num_threads(threads)
    img = np.asarray(Image.open(photo).convert("RGB"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        upscale_image(model, img, model.scale)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / (img.shape[0] * img.shape[1] / 1e6)


def _out_dir() -> Path:
    """Where export writes: `$RIBSR_WEIGHTS_DIR` when set (a trial folder), else the git source `weights/`."""
    return weights_dir() if os.environ.get("RIBSR_WEIGHTS_DIR") else source_weights_dir()


def _write_manifest(out_dir: Path, models: list[dict]) -> None:
    shipped = {"models": sorted(models, key=lambda m: (m["scale"], m.get("variant", "clean") != "clean", m["name"]))}
    atomic_write_text(out_dir / "MANIFEST.json", json.dumps(shipped, indent=2) + "\n")


def _run_config(run: Path) -> dict:
    path = run / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _hardware(config: dict) -> str:
    """What the run trained on, for the manifest: the CPU's model name and the run's thread count."""
    threads = int(config.get("threads") or 1)
    return f"{cpu_model_name()} CPU, {threads} thread{'s' if threads > 1 else ''}"


def _first_weights(init_from: str) -> str | None:
    """The shipped weights a chain of fine-tunes started from (their stem, e.g. ribsr-s-x2): a run that
    started from another run's checkpoint (runs/X/best.safetensors) follows X's own init_from, so the manifest
    (and `--denoise`, which pairs a real model with its clean origin) names the model, not "best"."""
    seen: set[Path] = set()
    path = Path(init_from) if init_from else None
    while path is not None and (path.parent / "config.json").is_file() and path.parent not in seen:
        seen.add(path.parent)
        parent = _run_config(path.parent).get("init_from")
        if not parent:
            break
        path = Path(parent)
    return path.stem if path is not None else None


def pick_checkpoint(run: Path, checkpoint: str = "auto") -> Path:
    """The run's weights to ship: `best` (the EMA at its best validation), `last` (the final EMA), or `auto`
    = best when the run kept one (runs since 0.4.0), else last."""
    best, last = run / BEST_FILE, run / EMA_FILE
    if checkpoint not in ("auto", "best", "last"):
        raise ExportError(run, f"unknown checkpoint {checkpoint!r}: choose auto, best or last")
    src = best if checkpoint == "best" or (checkpoint == "auto" and best.is_file()) else last
    if not src.is_file():
        raise ExportError(src, "no such file (train the run first; best.safetensors needs --val-dir)")
    return src


def export(run: Path, name: str, default: bool, benchmarks: Path, photo: Path, hardware: str | None = None,
           checkpoint: str = "auto") -> dict:
    config = _run_config(run)
    variant = "real" if config.get("degradation") == "real" else "clean"
    if variant == "real" and default:
        raise ExportError(run, "a real-photo model is never the default for its scale (drop --default); "
                               "users pick it with -m real or --denoise")
    src = pick_checkpoint(run, checkpoint)
    init_from = _first_weights(config.get("init_from") or "")
    training_data = TRAINING_DATA + ("; degraded on the fly by ribsr's real-photo pipeline (training/degrade.py)"
                                     if variant == "real" else "")
    model = load_model(src)
    prov = model.provenance  # type: ignore[attr-defined]
    out_dir = _out_dir()
    out_dir.mkdir(exist_ok=True)
    target = out_dir / f"{name}.safetensors"
    provenance = dict(prov, name=name, training_data=training_data, hardware=hardware or _hardware(config),
                      exported=time.strftime("%Y-%m-%d"))
    save_model(model, target, provenance)
    size_mb = target.stat().st_size / 2**20
    if size_mb > 20:
        raise ExportError(target, f"{size_mb:.1f} MB exceeds the 20 MB limit for shipped weights")
    upscaler = scoring_upscaler(target, model.scale)  # the shipped file itself, read back once
    entry = {
        "name": name,
        "file": target.name,
        "scale": model.scale,
        "arch_name": prov.get("arch_name", "custom"),
        "arch": model.arch,
        "params": sum(p.numel() for p in model.parameters()),
        "sha256": sha256_file(target),
        "default": default,
        "variant": variant,
        "training": {"data": training_data, "steps": prov.get("steps"), "minutes": prov.get("minutes"),
                     "hardware": provenance["hardware"], "seed": prov.get("seed"),
                     "reproduce": f"scripts/{'train_real' if variant == 'real' else 'train_shipped'}.sh "
                                  f"(stage {run.name})"},
        "metrics": measure(upscaler, benchmarks),
        "metrics_degraded": measure(upscaler, benchmarks, degrade="real"),
        "cpu_seconds_per_input_mp": round(cpu_seconds_per_mp(upscaler.network, photo), 2),
    }
    if init_from:
        entry["training"]["init_from"] = init_from
    if config.get("init_from") and Path(config["init_from"]).stem != init_from:
        entry["training"]["continued_from"] = config["init_from"]
    if config.get("patch_detail"):  # crops biased toward detail (`ribsr train --patch-detail`)
        entry["training"]["patch_detail"] = config["patch_detail"]
    if config.get("damage_estimator"):  # a damage-conditioned network: where its frozen estimator came from
        entry["training"]["damage_estimator"] = config["damage_estimator"]
    if config.get("damage_told") in ("estimate", "context"):  # `ribsr train --damage-told estimate|context`
        entry["training"]["damage_told"] = config["damage_told"]
    on = (f"{prov.get('val_psnr_y')} dB PSNR-Y on {prov.get('val_set', '?')}"
          f"{' (degraded)' if prov.get('val_degradation') == 'real' else ''}")
    if prov.get("soup_of"):  # scripts/soup.py: the average of several runs' best EMAs
        runs = [i["run"] for i in prov["soup_of"]]
        entry["training"]["soup_of"] = prov["soup_of"]
        entry["training"]["selected"] = f"uniform average (model soup) of the best EMAs of {', '.join(runs)}: {on}"
        entry["training"]["reproduce"] = (f"scripts/train_real.sh, then scripts/soup.py runs/{' runs/'.join(runs)} "
                                          f"--out runs/{run.name}")
    elif "val_psnr_y" in prov:  # chosen by validation: say on what, so the Set5 rows can be read with that in mind
        entry["training"]["selected"] = f"best validation EMA, step {prov.get('steps')}: {on}"
    models = [m for m in manifest() if m["name"] != name]
    if default:
        for m in models:
            if m["scale"] == entry["scale"]:
                m["default"] = False
    models.append(entry)
    _write_manifest(out_dir, models)
    return entry


def remeasure(name: str, benchmarks: Path) -> dict:
    """Add `metrics_degraded` (and `variant`, "clean" when unset) to a shipped model's manifest entry.

    The weights are loaded by name, so their sha256 is checked first; file, sha256 and the other fields stay
    as they are.
    """
    models = manifest()
    entry = next((m for m in models if m["name"].lower() == name.lower()), None)
    if entry is None:
        raise ExportError(name, f"not in {weights_dir() / 'MANIFEST.json'} "
                                f"(shipped: {', '.join(m['name'] for m in models) or 'none'})")
    entry.setdefault("variant", "clean")
    entry["metrics_degraded"] = measure(scoring_upscaler(entry["name"], int(entry["scale"])), benchmarks, degrade="real")
    _write_manifest(_out_dir(), models)
    return entry


README_MARKERS = ("<!-- models-table -->", "<!-- /models-table -->")


def models_table(models: list[dict]) -> str:
    """README's table of shipped models, rendered from the manifest so the docs cannot drift from the measurements."""
    rows = ["| model | scale | params | Set5 PSNR-Y / SSIM-Y (bicubic) | Set14 PSNR-Y / SSIM-Y (bicubic) "
            "| degraded Set5 PSNR-Y / SSIM-Y (bicubic) | degraded Set14 PSNR-Y / SSIM-Y (bicubic) "
            "| CPU s / input MP | training |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in models:
        cells = []
        for key in ("metrics", "metrics_degraded"):
            for ds in ("Set5", "Set14"):
                r = m.get(key, {}).get(ds)
                cells.append(f"{r['psnr_y']:.2f} / {r['ssim_y']:.4f} ({r['bicubic_psnr_y']:.2f})" if r else "n/a")
        t = m["training"]
        tags = [tag for tag, on in (("default", m.get("default")), ("real photos", m.get("variant") == "real")) if on]
        steps = f"{t['steps']} steps, {t['minutes']:.0f} min on {t['hardware']}"
        if t.get("init_from"):
            steps += f", fine-tuned from `{t['init_from']}`"
        if t.get("continued_from"):
            steps += f" (continued from `{t['continued_from']}`; steps and minutes are this run's alone)"
        if t.get("patch_detail"):
            steps += f", crops biased toward detail (`--patch-detail {t['patch_detail']:g}`)"
        if t.get("damage_told") == "estimate":
            steps += ", told its estimator's readings (`--damage-told estimate`)"
        elif t.get("damage_told") == "context":
            steps += ", told its estimator's readings of each patch's 128-px region (`--damage-told context`)"
        if t.get("soup_of"):
            steps += f" (the average of {len(t['soup_of'])} runs, `scripts/soup.py`)"
        label = f"`{m['name']}`" + (f" ({', '.join(tags)})" if tags else "")
        rows.append(f"| {label} | ×{m['scale']} "
                    f"| {m['params'] / 1e6:.2f} M | {' | '.join(cells)} | {m['cpu_seconds_per_input_mp']:.2f} "
                    f"| {steps} |")
    return "\n".join(rows)


def update_readme(readme: Path, models: list[dict]) -> bool:
    """Replace the text between README's models-table markers; False when the markers are missing. A README
    that does not exist (a trial folder's, see `readme_path`) is created holding just the table."""
    start, end = README_MARKERS
    text = readme.read_text() if readme.is_file() else f"{start}\n{end}\n"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{models_table(models)}\n{end}{tail}")
    return True


def readme_path() -> Path:
    """The README whose models table export re-renders: the repository's, or the trial folder's when
    `RIBSR_WEIGHTS_DIR` is set (a trial manifest must not reach the committed README)."""
    if os.environ.get("RIBSR_WEIGHTS_DIR"):
        return Path(os.environ["RIBSR_WEIGHTS_DIR"]) / "README.md"
    return source_weights_dir().parent / "README.md"


if __name__ == "__main__":  # the older spelling of `ribsr export`, kept for scripts that use it
    from ribsr_cli.cli import app

    app(["export", *sys.argv[1:]], prog_name="python -m ribsr_cli")
