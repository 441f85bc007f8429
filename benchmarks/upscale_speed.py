"""`ribsr upscale` speed and memory on a 12 MP photo at x2, per tile size, plus what tiling costs in quality.

    python benchmarks/upscale_speed.py [--photo FILE] [--model NAME|CKPT] [--tiles 128,256,384,512]
                                       [--threads 2] [--quick] [--whole]

Each tile size runs the real CLI (`python -m ribsr_cli upscale`) in its own
subprocess, so the wall time includes everything a user waits for (start-up,
model load, decode, encode) and the peak RSS, read with os.wait4 for that child
alone, is per configuration. `file s` is the per-file time from the CLI's --json
report (decode + upscale + encode); MP/s divides the input megapixels by it.

Without --photo, a realistic 4000x3000 photo is built from the four example
photos (a 2x2 mosaic, each Lanczos-resized); --quick makes it 2 MP instead. The
whole-image run (--tile 0) is skipped when the CLI's own auto-tile rule says it
does not fit in memory (it never does for 12 MP on a laptop); --whole forces it.

Quality: tiled and untiled outputs of a smaller photo (a 2x2 mosaic of native
384x384 crops, 768x768; 512x512 with --quick) are compared by PSNR, per tile size,
in this process. A tile at least as large as that photo covers it whole.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if p.suffix in (".png", ".jpg"))


def mosaic(width: int, height: int) -> Image.Image:
    """A photo-like image of the given size: the examples in a 2x2 grid, each Lanczos-resized to a quarter."""
    canvas = Image.new("RGB", (width, height))
    cells = [(0, 0), (width // 2, 0), (0, height // 2), (width // 2, height // 2)]
    for path, (x, y) in zip(EXAMPLES, cells):
        with Image.open(path) as im:
            cell = im.convert("RGB").resize((width - width // 2 if x else width // 2,
                                             height - height // 2 if y else height // 2), Image.Resampling.LANCZOS)
        canvas.paste(cell, (x, y))
    return canvas


def native_mosaic(side: int) -> np.ndarray:
    """side x side from four native-resolution centre crops (no resampling), for the PSNR comparison."""
    half = side // 2
    canvas = np.zeros((side, side, 3), np.uint8)
    for path, (y, x) in zip(EXAMPLES, [(0, 0), (0, half), (half, 0), (half, half)]):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            left, top = max(0, (rgb.width - half) // 2), max(0, (rgb.height - half) // 2)
            canvas[y:y + half, x:x + half] = np.asarray(rgb.crop((left, top, left + half, top + half)))
    return canvas


def pick_model(requested: str | None, workdir: Path) -> tuple[str | None, str, str]:
    """(-m value or None for the CLI default, display name, note)."""
    from ribsr_cli.catalog import default_model

    if requested:
        return requested, Path(requested).stem if Path(requested).exists() else requested, ""
    entry = default_model(2)
    if entry is not None:
        return None, entry.name, "shipped default x2"
    import torch

    from ribsr_cli.engine import build_model
    from ribsr_cli.engine.checkpoint import save_model

    torch.manual_seed(0)
    path = workdir / "random-ribsr-s-x2.safetensors"
    save_model(build_model("ribsr-s-x2"), path)
    return str(path), "random-ribsr-s-x2", "no shipped x2 model: random-init ribsr-s-x2 (speed is representative, quality is not)"


def run_cli(photo: Path, model: str | None, tile: str, threads: int, workdir: Path) -> dict:
    """One `ribsr upscale` in a child process; wall time, the child's own peak RSS, and its JSON report."""
    report, out = workdir / f"report-{tile}.json", workdir / f"out-{tile}"
    argv = [sys.executable, "-m", "ribsr_cli", "upscale", str(photo), "-o", str(out), "--tile", tile,
            "--overwrite", "-q", "--json", str(report)] + (["-m", model] if model else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)  # this child's rusage, not the max over all children
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        return {"error": f"exit {child.returncode}: {log.strip().splitlines()[-1] if log.strip() else ''}"}
    entry = json.loads(report.read_text())["files"][0]
    for f in out.iterdir():
        f.unlink()  # a 48 MP output per configuration adds up
    return {"wall": wall, "file": entry["seconds"], "rss_mib": usage.ru_maxrss / 1024, "out_size": entry["output_size"]}


def whole_image_fits(model: str | None, width: int, height: int) -> tuple[bool, str]:
    """The CLI's own rule: `--tile auto` picks 0 (whole image) only when it fits a quarter of free memory."""
    from ribsr_cli.engine.registry import resolve
    from ribsr_cli.engine.runner import RunOptions, Upscaler
    from ribsr_cli.engine.runtime import free_memory_bytes

    upscaler = Upscaler(resolve(model, 2), RunOptions(device="cpu"))
    tile = upscaler.choose_tile(height, width)
    return tile == 0, f"--tile auto picks {tile} with {free_memory_bytes(upscaler.device) / 2**30:.0f} GiB available"


def tiling_psnr(model: str | None, tiles: list[int], side: int, threads: int) -> dict[int, tuple[float, int]]:
    """PSNR (dB) and max |difference| of each tiled output against the untiled one, 8-bit, default overlap."""
    import torch

    from ribsr_cli.engine.registry import resolve
    from ribsr_cli.engine.runner import RunOptions, Upscaler
    from ribsr_cli.engine.tiling import upscale_image

    torch.set_num_threads(threads)
    upscaler = Upscaler(resolve(model, 2), RunOptions(device="cpu"))
    net, autocast = upscaler.network, upscaler.context
    image = native_mosaic(side)
    whole = upscale_image(net, image, 2, tile=0, autocast=autocast).astype(np.float64)
    results = {}
    for tile in tiles:
        tiled = upscale_image(net, image, 2, tile=tile, overlap=32, autocast=autocast).astype(np.float64)
        mse = float(np.mean((tiled - whole) ** 2))
        results[tile] = (float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse), int(np.abs(tiled - whole).max()))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, help="photo to upscale (default: a 4000x3000 mosaic of examples/)")
    ap.add_argument("--model", help="shipped model name or checkpoint (default: shipped x2, else random-init ribsr-s-x2)")
    ap.add_argument("--tiles", default="128,256,384,512", help="comma-separated tile sizes in LR pixels")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each run (OMP_NUM_THREADS)")
    ap.add_argument("--quick", action="store_true", help="a 2 MP photo and a 512x512 PSNR photo")
    ap.add_argument("--whole", action="store_true", help="also run the whole image untiled, even if it may not fit")
    args = ap.parse_args()
    tiles = [int(t) for t in args.tiles.split(",") if t.strip()]

    with tempfile.TemporaryDirectory(prefix="ribsr-bench-") as tmp:
        workdir = Path(tmp)
        model, model_name, note = pick_model(args.model, workdir)
        if args.photo:
            photo, origin = args.photo, str(args.photo)
            with Image.open(photo) as im:
                width, height = im.size
        else:
            width, height = (1632, 1224) if args.quick else (4000, 3000)
            photo, origin = workdir / "photo.png", "mosaic of examples/*, Lanczos"
            mosaic(width, height).save(photo)
        mp = width * height / 1e6
        import torch

        print(f"photo {width}x{height} ({mp:.1f} MP, {origin}), x2, model {model_name}"
              f"{f' ({note})' if note else ''}, {args.threads} CPU threads, torch {torch.__version__}")
        configs = [str(t) for t in tiles]
        fits, detail = whole_image_fits(model, width, height)
        if args.whole or fits:
            configs.append("0")
        print(f"{'tile':>6s} {'wall s':>8s} {'file s':>8s} {'in MP/s':>8s} {'out MP/s':>9s} {'peak RSS MiB':>13s}")
        for tile in configs:
            r = run_cli(photo, model, tile, args.threads, workdir)
            label = "whole" if tile == "0" else tile
            if "error" in r:
                print(f"{label:>6s}  failed: {r['error']}")
                continue
            print(f"{label:>6s} {r['wall']:8.1f} {r['file']:8.1f} {mp / r['file']:8.3f} {4 * mp / r['file']:9.3f} "
                  f"{r['rss_mib']:13.0f}", flush=True)
        if "0" not in configs:
            print(f"{'whole':>6s}  skipped: would not fit ({detail}); --whole forces it")

        side = 512 if args.quick else 768
        print(f"\ntiled vs untiled on a {side}x{side} mosaic of native crops (overlap 32):")
        print(f"{'tile':>6s} {'PSNR dB':>8s} {'max|d|':>7s}")
        for tile, (db, worst) in tiling_psnr(model, tiles, side, args.threads).items():
            note = "  (covers the photo whole)" if tile >= side else ""
            print(f"{tile:>6d} {db:8.2f} {worst:7d}{note}", flush=True)


if __name__ == "__main__":
    main()
