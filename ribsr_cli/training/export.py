"""Ship a trained run: measure it with the eval protocol, copy its EMA weights into `weights/`, update the manifest.

    python -m ribsr_cli.training.export runs/ribsr-s-x2 --name ribsr-s-x2 --default
    python -m ribsr_cli.training.export --readme      # only re-render README's models table

The manifest entry records what a user needs to trust and reproduce the file:
architecture, parameter count, sha256, training data, steps, wall time and
hardware, Set5/Set14 PSNR-Y/SSIM-Y beside bicubic, and CPU seconds per
megapixel of input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ribsr_cli.engine.checkpoint import load_model, save_model
from ribsr_cli.engine.registry import manifest, weights_dir

TRAINING_DATA = ("83 freely licensed photographs from Debian packages (shared/training-photos.tsv), "
                 "Lanczos-halved, benchmark leak check passed")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure(model_path: Path, scale: int, benchmarks: Path) -> dict:
    """PSNR-Y/SSIM-Y on Set5 and Set14 (official LR) for the model and bicubic."""
    from ribsr_cli.engine.inference import make_upscaler
    from ribsr_cli.evaluation import discover_dataset, evaluate

    name, fn = make_upscaler(str(model_path), scale, device="cpu")
    sets = [discover_dataset(benchmarks / s) for s in ("Set5", "Set14") if (benchmarks / s).is_dir()]
    report = evaluate(sets, [scale], {name: fn})
    metrics: dict = {}
    for r in report.results:
        key = "bicubic" if r.method == "bicubic" else "model"
        metrics.setdefault(r.dataset, {})[f"{key}_psnr_y" if key == "bicubic" else "psnr_y"] = round(r.psnr, 3)
        metrics[r.dataset][f"{key}_ssim_y" if key == "bicubic" else "ssim_y"] = round(r.ssim, 4)
    return metrics


def cpu_seconds_per_mp(model_path: Path, photo: Path, threads: int = 2) -> float:
    """Wall seconds per input megapixel for a whole-image CPU forward (median of 3)."""
    from PIL import Image

    from ribsr_cli.engine.tiling import upscale_image

    torch.set_num_threads(threads)
    model = load_model(model_path)
    img = np.asarray(Image.open(photo).convert("RGB"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        upscale_image(model, img, model.scale)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / (img.shape[0] * img.shape[1] / 1e6)


def export(run: Path, name: str, default: bool, benchmarks: Path, photo: Path, hardware: str | None = None) -> dict:
    src = run / "ema.safetensors"
    model = load_model(src)
    prov = model.provenance  # type: ignore[attr-defined]
    out_dir = weights_dir()
    out_dir.mkdir(exist_ok=True)
    target = out_dir / f"{name}.safetensors"
    provenance = dict(prov, name=name, training_data=TRAINING_DATA, hardware=hardware or f"{platform.processor() or platform.machine()} CPU, 1 thread",
                      exported=time.strftime("%Y-%m-%d"))
    save_model(model, target, provenance)
    size_mb = target.stat().st_size / 2**20
    if size_mb > 20:
        raise SystemExit(f"{target}: {size_mb:.1f} MB exceeds the 20 MB limit for shipped weights")
    entry = {
        "name": name,
        "file": target.name,
        "scale": model.scale,
        "arch_name": prov.get("arch_name", "custom"),
        "arch": model.arch,
        "params": sum(p.numel() for p in model.parameters()),
        "sha256": _sha256(target),
        "default": default,
        "training": {"data": TRAINING_DATA, "steps": prov.get("steps"), "minutes": prov.get("minutes"),
                     "hardware": provenance["hardware"], "seed": prov.get("seed"),
                     "reproduce": f"scripts/train_shipped.sh (stage {run.name})"},
        "metrics": measure(target, model.scale, benchmarks),
        "cpu_seconds_per_input_mp": round(cpu_seconds_per_mp(target, photo), 2),
    }
    models = [m for m in manifest() if m["name"] != name]
    if default:
        for m in models:
            if m["scale"] == entry["scale"]:
                m["default"] = False
    models.append(entry)
    shipped = {"models": sorted(models, key=lambda m: (m["scale"], m["name"]))}
    (out_dir / "MANIFEST.json").write_text(json.dumps(shipped, indent=2) + "\n")
    return entry


README_MARKERS = ("<!-- models-table -->", "<!-- /models-table -->")


def models_table(models: list[dict]) -> str:
    """README's table of shipped models, rendered from the manifest so the docs cannot drift from the measurements."""
    rows = ["| model | scale | params | Set5 PSNR-Y / SSIM-Y (bicubic) | Set14 PSNR-Y / SSIM-Y (bicubic) "
            "| CPU s / input MP | training |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in models:
        cells = []
        for ds in ("Set5", "Set14"):
            r = m["metrics"].get(ds)
            cells.append(f"{r['psnr_y']:.2f} / {r['ssim_y']:.4f} ({r['bicubic_psnr_y']:.2f})" if r else "n/a")
        t = m["training"]
        rows.append(f"| `{m['name']}`{' (default)' if m.get('default') else ''} | ×{m['scale']} "
                    f"| {m['params'] / 1e6:.2f} M | {cells[0]} | {cells[1]} | {m['cpu_seconds_per_input_mp']:.2f} "
                    f"| {t['steps']} steps, {t['minutes']:.0f} min on {t['hardware']} |")
    return "\n".join(rows)


def update_readme(readme: Path, models: list[dict]) -> bool:
    """Replace the text between README's models-table markers; False when the markers are missing."""
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{models_table(models)}\n{end}{tail}")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", help="run folder holding ema.safetensors")
    ap.add_argument("--name")
    ap.add_argument("--readme", action="store_true", help="only re-render README's models table from the manifest")
    ap.add_argument("--default", action="store_true", help="make it the default model for its scale")
    ap.add_argument("--benchmarks", type=Path, default=Path("../shared/benchmarks"))
    ap.add_argument("--photo", type=Path, default=Path("examples/astronaut.png"), help="photo for the CPU timing")
    ap.add_argument("--hardware", help="what the run trained on, when not one CPU thread throughout")
    args = ap.parse_args()
    readme = weights_dir().parent / "README.md"
    if args.readme:
        raise SystemExit(0 if update_readme(readme, manifest()) else f"{readme}: models-table markers not found")
    if args.run is None or not args.name:
        ap.error("give a run folder and --name (or --readme)")
    entry = export(args.run, args.name, args.default, args.benchmarks, args.photo, args.hardware)
    print(json.dumps({k: entry[k] for k in ("name", "scale", "params", "sha256", "metrics", "cpu_seconds_per_input_mp")}, indent=2))
    update_readme(readme, manifest())


if __name__ == "__main__":
    main()
