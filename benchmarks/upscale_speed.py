"""`ribsr upscale` speed and memory on a 12 MP photo at x2, per tile size, plus what tiling costs in quality.

    python benchmarks/upscale_speed.py [--photo FILE | --size WxH] [--scale 2|3|4] [--model NAME|CKPT]
                                       [--tiles auto,128,256,384,512] [--precisions auto,fp32]
                                       [--threads 2] [--quick] [--whole] [--no-psnr] [--json FILE]

e.g. the 24 MP x4 memory case of issue 14:
    python benchmarks/upscale_speed.py --size 6000x4000 --scale 4 --tiles auto --no-psnr

Each tile size runs the real CLI (`python -m ribsr_cli upscale`) in its own
subprocess, so the wall time includes everything a user waits for (start-up,
model load, decode, encode) and the peak RSS, read with os.wait4 for that child
alone, is per configuration, with the child's user and system CPU time and its
minor page faults (system time and faults show allocation churn, not compute).
MP/s divides the input megapixels by the per-file time from the CLI's --json
report (decode + upscale + encode).

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


def pick_model(requested: str | None, workdir: Path, scale: int) -> tuple[str | None, str, str]:
    """(-m value or None for the CLI default, display name, note)."""
    from ribsr_cli.catalog import default_model

    if requested:
        return requested, Path(requested).stem if Path(requested).exists() else requested, ""
    entry = default_model(scale)
    if entry is not None:
        return None, entry.name, f"shipped default x{scale}"
    import torch

    from ribsr_cli.engine import build_model
    from ribsr_cli.engine.checkpoint import save_model

    torch.manual_seed(0)
    name = f"ribsr-s-x{scale}"
    path = workdir / f"random-{name}.safetensors"
    save_model(build_model(name), path)
    return str(path), f"random-{name}", f"no shipped x{scale} model: random-init {name} (speed is representative, quality is not)"


def run_cli(photo: Path, model: str | None, tile: str, threads: int, workdir: Path, scale: int = 2,
            precision: str = "auto", keep: Path | None = None) -> dict:
    """One `ribsr upscale` in a child process: wall time, the child's own peak RSS, user and system CPU time
    and minor page faults (from its rusage), its JSON report; `keep` receives the output file."""
    report, out = workdir / f"report-{tile}-{precision}.json", workdir / f"out-{tile}-{precision}"
    argv = [sys.executable, "-m", "ribsr_cli", "upscale", str(photo), "-o", str(out), "--tile", tile, "-s", str(scale),
            "--precision", precision, "--overwrite", "-q", "--json", str(report)] + (["-m", model] if model else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)  # this child's rusage, not the max over all children
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        return {"error": f"exit {child.returncode}: {log.strip().splitlines()[-1] if log.strip() else ''}"}
    doc = json.loads(report.read_text())
    entry = doc["files"][0]
    for f in out.iterdir():
        if keep is not None:
            f.replace(keep)
        else:
            f.unlink()  # a 48 MP output per configuration adds up
    return {"wall": wall, "file": entry["seconds"], "rss_mib": usage.ru_maxrss / 1024, "out_size": entry["output_size"],
            "user": usage.ru_utime, "sys": usage.ru_stime, "minflt": usage.ru_minflt, "tile": entry.get("tile"),
            "precision": doc.get("precision")}


def psnr_between(a: Path, b: Path) -> float:
    """PSNR (dB, 8-bit RGB) of one output file against another (e.g. the default precision against fp32)."""
    from ribsr_cli.imaging.metrics import psnr

    return psnr(np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB")),
                crop_border=0, test_y=False)


def whole_image_fits(upscaler, width: int, height: int) -> tuple[bool, str]:
    """The CLI's own rule (`Upscaler.choose_tile`): whether `--tile auto` runs this photo whole."""
    from ribsr_cli.engine.runtime import free_memory_bytes

    tile = upscaler.choose_tile(height, width)
    return tile == 0, f"--tile auto picks {tile} with {free_memory_bytes(upscaler.device) / 2**30:.0f} GiB available"


def tiling_psnr(upscaler, tiles: list[int], side: int) -> dict[int, tuple[float, int]]:
    """PSNR (dB) and max |difference| of each tiled output against the untiled one, 8-bit, default overlap."""
    from ribsr_cli.engine.tiling import upscale_image
    from ribsr_cli.imaging.metrics import psnr

    net, scale, autocast = upscaler.network, upscaler.loaded.scale, upscaler.context
    image = native_mosaic(side)
    whole = upscale_image(net, image, scale, tile=0, autocast=autocast)
    results = {}
    for tile in tiles:
        tiled = upscale_image(net, image, scale, tile=tile, overlap=32, autocast=autocast)
        results[tile] = (psnr(tiled, whole, crop_border=0, test_y=False),
                         int(np.abs(tiled.astype(int) - whole.astype(int)).max()))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, help="photo to upscale (default: a 4000x3000 mosaic of examples/)")
    ap.add_argument("--model", help="shipped model name or checkpoint (default: shipped x2, else random-init ribsr-s-x2)")
    ap.add_argument("--tiles", default="auto,128,256,384,512",
                    help="comma-separated tile sizes in LR pixels, or auto (the CLI's default)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for each run (OMP_NUM_THREADS)")
    ap.add_argument("--quick", action="store_true", help="a 2 MP photo and a 512x512 PSNR photo")
    ap.add_argument("--whole", action="store_true", help="also run the whole image untiled, even if it may not fit")
    ap.add_argument("--scale", type=int, default=2, help="model scale (2, 3 or 4; default 2)")
    ap.add_argument("--size", help="WxH of the built mosaic photo (default 4000x3000; e.g. 6000x4000 for 24 MP)")
    ap.add_argument("--precisions", default="auto",
                    help="comma-separated --precision values, each run per tile (e.g. auto,fp32); with fp32 "
                         "among them, every other precision's output is compared with fp32's by PSNR")
    ap.add_argument("--no-psnr", action="store_true", help="skip the tiled-vs-untiled quality comparison")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    tiles = [t.strip() for t in args.tiles.split(",") if t.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]

    with tempfile.TemporaryDirectory(prefix="ribsr-bench-") as tmp:
        workdir = Path(tmp)
        model, model_name, note = pick_model(args.model, workdir, args.scale)
        import torch

        from ribsr_cli.bench import device_name
        from ribsr_cli.bench.options import parse_size
        from ribsr_cli.engine.registry import resolve
        from ribsr_cli.engine.runner import RunOptions, Upscaler

        torch.set_num_threads(args.threads)  # this process's own runs: the tiling comparison
        upscaler = Upscaler(resolve(model, args.scale), RunOptions(device="cpu"))  # what the CLI runs, loaded once
        if args.photo:
            photo, origin = args.photo, str(args.photo)
            with Image.open(photo) as im:
                width, height = im.size
        else:
            width, height = (1632, 1224) if args.quick else (4000, 3000)
            if args.size:
                width, height = parse_size(args.size)
            photo, origin = workdir / "photo.jpg", "mosaic of examples/*, Lanczos, JPEG q92"
            mosaic(width, height).save(photo, quality=92)
        mp = width * height / 1e6
        print(f"photo {width}x{height} ({mp:.1f} MP, {origin}), x{args.scale}, model {model_name}"
              f"{f' ({note})' if note else ''}, {args.threads} CPU threads, torch {torch.__version__}, "
              f"CPU {device_name(torch.device('cpu'))}")
        configs = list(tiles)
        fits, detail = whole_image_fits(upscaler, width, height)
        if args.whole or fits:
            configs.append("0")
        print(f"{'tile':>6s} {'prec':>5s} {'ran':>5s} {'wall s':>8s} {'user s':>7s} {'sys s':>7s} {'faults':>9s} "
              f"{'in MP/s':>8s} {'peak RSS MiB':>13s}")
        rows = []
        for tile in configs:
            outputs: dict[str, tuple[Path, dict]] = {}
            # precisions interleaved within a tile size, so a machine's drift touches all of them alike
            for precision in precisions:
                keep = workdir / f"keep-{tile}-{precision}.png" if "fp32" in precisions else None
                r = run_cli(photo, model, tile, args.threads, workdir, args.scale, precision, keep)
                label = "whole" if tile == "0" else tile
                if "error" in r:
                    print(f"{label:>6s} {precision:>5s}  failed: {r['error']}")
                    continue
                rows.append(dict(r, tile_asked=tile, precision_asked=precision))
                if keep is not None:
                    outputs[precision] = (keep, rows[-1])
                print(f"{label:>6s} {precision:>5s} {r['precision'] or '?':>5s} {r['wall']:8.1f} {r['user']:7.1f} "
                      f"{r['sys']:7.1f} {r['minflt']:9d} {mp / r['file']:8.3f} {r['rss_mib']:13.0f}", flush=True)
            for precision, (path, row) in outputs.items():
                if precision != "fp32" and "fp32" in outputs:
                    row["psnr_vs_fp32"] = psnr_between(path, outputs["fp32"][0])
                    print(f"{'':>6s} {precision:>5s} output PSNR against fp32's: {row['psnr_vs_fp32']:.2f} dB")
            for path, _ in outputs.values():
                path.unlink()
        if "0" not in configs:
            print(f"{'whole':>6s}  skipped: would not fit ({detail}); --whole forces it")
        if args.json:
            args.json.write_text(json.dumps({"photo": [width, height], "scale": args.scale, "model": model_name,
                                             "threads": args.threads, "rows": rows}, indent=2) + "\n")
        if args.no_psnr:
            return

        side = 512 if args.quick else 768
        print(f"\ntiled vs untiled on a {side}x{side} mosaic of native crops (overlap 32):")
        print(f"{'tile':>6s} {'PSNR dB':>8s} {'max|d|':>7s}")
        for tile, (db, worst) in tiling_psnr(upscaler, [int(t) for t in tiles if t.isdigit() and int(t) > 0], side).items():
            note = "  (covers the photo whole)" if tile >= side else ""
            print(f"{tile:>6d} {db:8.2f} {worst:7d}{note}", flush=True)


if __name__ == "__main__":
    main()
