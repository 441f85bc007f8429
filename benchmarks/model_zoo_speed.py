"""Speed and memory of ribsr's SST presets beside popular upscalers, on the same tile and device.

    python benchmarks/model_zoo_speed.py [--tile 64] [--repeats 3] [--threads 1] [--device auto]
                                         [--precision auto] [--json FILE]

Peers are randomly initialised networks built from spandrel's architecture classes at the published
configurations (Real-ESRGAN x4plus RRDBNet, realesr-general-x4v3 compact SRVGG, SwinIR-light, SPAN,
RealPLKSR, HAT-S); weights do not change speed, so nothing is downloaded. Each is loaded back through
ribsr's foreign-model path (spandrel detection from its state dict, `engine/foreign.py`) and run exactly
as `ribsr upscale` runs it: `engine.runner.Upscaler` picks the precision (a model spandrel marks fp32-only
falls back to fp32, and the row says so). All rows are x4 on one square LR tile.

Columns: parameters; ms per input megapixel (median of --repeats timed calls after one warm-up, divided by
the tile's megapixels); peak MB = extra memory of one call (CUDA: max_memory_allocated; CPU: torch
profiler allocator events, `bench.peak_memory_mb`); the precision that ran. Needs the `models`
extra (spandrel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribsr_cli.bench import device_name, peak_memory_mb, time_ms  # noqa: E402
from ribsr_cli.engine import build_model  # noqa: E402
from ribsr_cli.engine.runner import LoadedModel, RunOptions, Upscaler  # noqa: E402
from ribsr_cli.engine.runtime import pick_device  # noqa: E402
from ribsr_cli.engine.spandrel_import import import_spandrel  # noqa: E402

SST_PRESETS = ("ribsr-s-x4", "SST-light-x4", "SST-x4")


def peers() -> dict[str, Callable[[], torch.nn.Module]]:
    """Published x4 configurations, built from spandrel's classes (random weights)."""
    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.PLKSR import RealPLKSR
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "RRDBNet (Real-ESRGAN x4plus)": lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4),
        "SRVGG compact (general-x4v3)": lambda: Compact(num_feat=64, num_conv=32, upscale=4, act_type="prelu"),
        "SwinIR-light": lambda: SwinIR(img_size=64, embed_dim=60, depths=[6] * 4, num_heads=[6] * 4, window_size=8,
                                       mlp_ratio=2, upscale=4, upsampler="pixelshuffledirect"),
        "SPAN": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4),
        "RealPLKSR": lambda: RealPLKSR(dim=64, n_blocks=28, upscaling_factor=4, kernel_size=17),
        "HAT-S": lambda: HAT(img_size=64, embed_dim=144, depths=[6] * 6, num_heads=[6] * 6, window_size=16,
                             compress_ratio=24, squeeze_factor=24, mlp_ratio=2, upscale=4, upsampler="pixelshuffle"),
    }


def load_peer(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The peer as ribsr runs a user's checkpoint: its state dict detected and loaded through spandrel."""
    from ribsr_cli.engine.foreign import load_foreign

    torch.manual_seed(0)
    return load_foreign(build().state_dict(), "<random>")


def measure(model: torch.nn.Module, tile: int, repeats: int, device: torch.device, precision: str) -> dict[str, Any]:
    upscaler = Upscaler(LoadedModel.of(model), RunOptions(device=str(device), precision=precision))
    context = upscaler.context
    x = torch.rand(1, 3, tile, tile, generator=torch.Generator().manual_seed(0)).to(device)

    def call() -> None:
        with torch.inference_mode(), context:
            model(x)

    call()  # warm-up: lazy allocations, caches, kernel choice
    times = [time_ms(call, device) for _ in range(repeats)]
    megapixels = tile * tile / 1e6
    return {"params": sum(p.numel() for p in model.parameters()),
            "ms_per_mp": statistics.median(times) / megapixels,
            "peak_mb": peak_memory_mb(call, device),
            "precision": upscaler.report.precision,
            "notes": upscaler.report.notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile", type=int, default=64, help="LR tile side (default 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steady on a shared machine)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto: bf16 on CUDA (where a model supports it), fp32 on CPU")
    parser.add_argument("--only", default="", help="comma-separated substrings of row names to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows: dict[str, dict[str, Any]] = {}
    candidates: list[tuple[str, Callable[[], torch.nn.Module]]] = \
        [(f"ribsr {p}", lambda p=p: build_model(p).eval()) for p in SST_PRESETS]
    candidates += [(name, lambda b=b: load_peer(b)) for name, b in peers().items()]
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    for name, make in candidates:
        if wanted and not any(w in name.lower() for w in wanted):
            continue
        try:
            rows[name] = measure(make(), args.tile, args.repeats, device, args.precision)
        except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        print(f"measured {name}", file=sys.stderr, flush=True)
    where = f"{device_name(device)} ({device.type}, {args.threads} thread(s)), torch {torch.__version__}"
    print(f"\nx4, one {args.tile}x{args.tile} LR tile, {where}\n")
    print("| model | params | ms / input MP | peak MB | precision |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | - | - | - | failed: {r['error']} |")
        else:
            note = " (fallback)" if r["notes"] else ""
            print(f"| {name} | {r['params'] / 1e6:.2f} M | {r['ms_per_mp']:,.0f} | {r['peak_mb']:.0f} | "
                  f"{r['precision']}{note} |")
    if args.json:
        args.json.write_text(json.dumps({"device": where, "tile": args.tile, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
