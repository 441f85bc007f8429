"""One-shot GPU evidence for the paper's claim, in under 8 minutes on one CUDA GPU.

    python benchmarks/gpu_suite.py [--out FILE.json] [--budget-s 450] [--photo PHOTO.jpg]
    python benchmarks/gpu_suite.py --cpu-smoke   # plumbing check without a GPU (tiny sizes, CPU)

Writes one JSON (default benchmarks/results/<gpu-name>-<date>.json), rewritten
after every section so a crash or a kill still leaves what was measured:

- env:            `ribsr info`'s environment plus the benchmark's (device, flags, methods);
- parity:         every shared fixture (../shared/fixtures/sst_reference/*.pt) on the GPU in
                  fp32 and bf16 vs the CPU fp32 reference output: max abs error, kernels that ran;
- attention:      the `ribsr bench` attention table, windows 16..96, bf16, every kernel, flex;
- network:        RIB vs RPB, SST-light and SST (base) at 1280x720 output: inference and one
                  training step (latency and peak memory);
- upscale:        `ribsr upscale` wall time on a 12 MP photo at 2x (a benchmark image enlarged
                  to 4000x3000 with PIL unless --photo is given);
- attention_train: the attention table again, forward + backward (last: first to go when short).

Each section is wrapped: a failure is recorded (error and traceback) and the
next section runs. With --budget-s, a section whose usual duration no longer
fits is recorded as skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ribsr_cli import benchmarking as bm  # noqa: E402
from ribsr_cli.commands.info import environment  # noqa: E402
from ribsr_cli.engine import attention_report, build_model, configure_attention  # noqa: E402

SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "sst_reference"
PHOTO_SOURCES = sorted((SHARED / "benchmarks").glob("*/HR/*.png"))


class Suite:
    """Runs sections in order, each guarded, and keeps the JSON on disk current."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.report: dict[str, Any] = {"suite": "ribsr gpu_suite", "started": dt.datetime.now().isoformat(timespec="seconds"),
                                       "budget_s": budget_s, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():5.0f}s] {message}", flush=True)

    def section(self, name: str, expected_s: float, fn: Callable[[], Any]) -> None:
        left = self.left()
        record: dict[str, Any]
        if left < expected_s:
            record = {"status": "skipped", "reason": f"budget: {left:.0f} s left, section usually takes ~{expected_s:.0f} s"}
            self.log(f"{name}: skipped ({record['reason']})")
        else:
            self.log(f"{name}: start")
            t0 = time.perf_counter()
            try:
                record = {"status": "ok", "data": fn()}
            except Exception as exc:  # keep going: one broken section must not lose the others
                record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc(limit=8)}
                self.log(f"{name}: FAILED {record['error'][:200]}")
            record["seconds"] = round(time.perf_counter() - t0, 1)
            self.log(f"{name}: {record['status']} in {record['seconds']} s")
        self.report["sections"][name] = record
        self.save()

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=2, default=str))


# ---- sections -------------------------------------------------------------------------


def section_env(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {**environment(), **bm.bench_environment(device, dtype)}


def section_parity(device: torch.device) -> dict[str, Any]:
    """Fixture outputs on this device vs the CPU fp32 reference (and vs the reference's own bf16)."""
    if not FIXTURES.is_dir() or not list(FIXTURES.glob("*.pt")):
        raise FileNotFoundError(f"no fixtures in {FIXTURES}")
    results: dict[str, Any] = {}
    for path in sorted(FIXTURES.glob("*.pt")):
        ref = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(ref["config"])
        model.load_state_dict(ref["state_dict"], strict=True)
        model = model.to(device).eval()
        x = ref["input"].to(device)
        rows = {}
        # bf16 as the reference makes it: attention operands in bf16, the rest fp32.
        for label, compute in (("fp32", None), ("bf16", torch.bfloat16)):
            configure_attention(model, compute_dtype=compute)
            with torch.no_grad():
                out = model(x).float().cpu()
            rows[label] = {
                "max_abs_err_vs_fp32_reference": (out - ref["output"]).abs().max().item(),
                "max_abs_err_vs_reference_bf16": (out - ref["output_bf16"]).abs().max().item(),
                "attention": attention_report(model),
            }
        reference_gap = (ref["output_bf16"] - ref["output"]).abs().max().item()
        results[path.stem] = {"modes": rows, "reference_bf16_vs_fp32": reference_gap,
                              "fp32_ok": rows["fp32"]["max_abs_err_vs_fp32_reference"] <= 1e-4}
    return results


def section_attention(suite: Suite, device: torch.device, windows: list[int], train: bool, flex: bool,
                      reserve_s: float) -> dict[str, Any]:
    """The `ribsr bench` attention table (bf16 on CUDA), after the RIB check, one window at a time
    so that windows left when only `reserve_s` of the budget remains are skipped, not half-run."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = bm.CoreShape.from_arch(bm.resolve_preset("SST-light")[1])
    kernels = ["auto", *bm.available_kernels(device)]
    check = bm.check_rib(shape, windows, device, dtype, kernels)
    env: dict[str, Any] = {}
    rows: list[bm.AttentionRow] = []
    skipped: list[int] = []
    for ws in windows if check.ok else []:
        if suite.left() < reserve_s:
            skipped.append(ws)
            continue
        opts = bm.Options(windows=[ws], device=str(device), dtype=bm.dtype_name(dtype), train=train,
                          all_kernels=True, flex=flex, target_s=0.5)
        rows += bm.run_attention(opts, shape, device, dtype, env, suite.log)
    comps = bm.compare_attention(rows)
    return {
        "check": {**check.as_json(), "details": check.details},
        "rows": [{**r.as_json(), "rpb_over_rib": c.rpb_over_rib, "mem_rpb_over_rib": c.mem_rpb_over_rib,
                  "rib_over_nope": c.rib_over_nope, "note": c.note} for r, c in zip(rows, comps)],
        "windows_skipped_for_budget": skipped,
        "profiler_flash_kernel": env.get("profiler_flash_kernel"),
    }


def section_network(suite: Suite, device: torch.device, presets: list[str], size: tuple[int, int], batch: int,
                    patch: int, reserve_s: float) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    opts = bm.Options(size=size, device=str(device), dtype=bm.dtype_name(dtype), train=True, batch=batch,
                      patch=patch, target_s=1.0)
    out: dict[str, Any] = {}
    for preset in presets:
        if suite.left() < reserve_s:
            out[preset] = {"skipped": f"budget: {suite.left():.0f} s left"}
            continue
        try:
            rows = bm.run_network(opts, device, dtype, suite.log, preset=preset)
            out[preset] = [{**r.as_json(), "kernels": r.kernel, "ms_p10": r.ms_p10, "ms_p90": r.ms_p90,
                            "rpb_over_this": ratio, "skipped": r.skipped}
                           for r, ratio in zip(rows, bm.compare_network(rows))]
        except Exception as exc:  # SST base may not fit a small GPU: keep SST-light's rows
            out[preset] = {"error": f"{type(exc).__name__}: {exc}"}
        bm.release_memory(device)
    return out


def make_photo(path: Path, size: tuple[int, int]) -> str:
    """A photo-like JPEG: a benchmark image cropped to 4:3, enlarged with Lanczos, light sensor noise."""
    import numpy as np
    from PIL import Image

    if not PHOTO_SOURCES:
        raise FileNotFoundError(f"no benchmark images under {SHARED / 'benchmarks'}")
    source = max(PHOTO_SOURCES, key=lambda p: Image.open(p).size[0] * Image.open(p).size[1])
    img = Image.open(source).convert("RGB")
    w, h = img.size
    crop_w, crop_h = min(w, h * 4 // 3), min(h, w * 3 // 4)
    img = img.crop(((w - crop_w) // 2, (h - crop_h) // 2, (w + crop_w) // 2, (h + crop_h) // 2))
    pixels = np.asarray(img.resize(size, Image.LANCZOS), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0.0, 2.0, pixels.shape)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(path, quality=92)
    return source.name


def section_upscale(device: torch.device, photo: Path | None, size: tuple[int, int], timeout_s: float) -> dict[str, Any]:
    """Wall time of the real CLI (a fresh process: imports, model load, tiling, encode) on a 12 MP photo."""
    with tempfile.TemporaryDirectory(prefix="ribsr-suite-") as tmp:
        tmp_dir = Path(tmp)
        source = str(photo)
        if photo is None:
            photo = tmp_dir / f"photo_{size[0]}x{size[1]}.jpg"
            source = f"synthetic from {make_photo(photo, size)}"
        report = tmp_dir / "upscale.json"
        cmd = [sys.executable, "-m", "ribsr_cli", "upscale", str(photo), "-o", str(tmp_dir / "out"), "-s", "2",
               "--device", device.type, "--overwrite", "--json", str(report)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(timeout_s, 30))
        wall = time.perf_counter() - t0
        data: dict[str, Any] = {"photo": source, "command": " ".join(cmd[1:]), "returncode": proc.returncode,
                                "wall_s": round(wall, 2), "stdout_tail": proc.stdout[-1500:],
                                "stderr_tail": proc.stderr[-1500:]}
        if report.is_file():
            data["report"] = json.loads(report.read_text())
        if proc.returncode != 0:
            data["error"] = f"ribsr upscale exited {proc.returncode}"
        return data


# ---- main -------------------------------------------------------------------------------


def default_out(device: torch.device) -> Path:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-smoke"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
    return REPO / "benchmarks" / "results" / f"{slug}-{dt.date.today().isoformat()}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<gpu-name>-<date>.json)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip sections that no longer fit (default 450)")
    ap.add_argument("--photo", type=Path, help="a real photo for the upscale section (default: synthetic 4000x3000)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: run every section on CPU at toy sizes, to check the script itself")
    args = ap.parse_args(argv)
    if args.photo is not None and not args.photo.is_file():
        ap.error(f"--photo {args.photo} does not exist")
    if args.cpu_smoke:
        device = torch.device("cpu")
        windows, train_windows, presets = [8, 16], [8], ["ribsr-s-x4"]
        size, batch, patch, photo_size, flex = (256, 144), 1, 16, (400, 300), False
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        windows, train_windows, presets = [16, 32, 48, 64, 96], [16, 32, 64], ["SST-light-x4", "SST-x4"]
        size, batch, patch, photo_size, flex = (1280, 720), 8, 64, (4000, 3000), True
    else:
        print("gpu_suite.py needs a CUDA GPU, and torch.cuda.is_available() is False here.\n"
              "For CPU numbers run `ribsr bench`; to check this script's plumbing run it with --cpu-smoke.",
              file=sys.stderr)
        return 2
    suite = Suite(args.out or default_out(device), args.budget_s)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    suite.log(f"device {device} ({bm.device_name(device)}), torch {torch.__version__}, writing {suite.out}")
    suite.section("env", 0, lambda: section_env(device, dtype))
    suite.section("parity", 10, lambda: section_parity(device))
    # reserve: time kept for the sections after this one (their usual durations)
    suite.section("attention", 60, lambda: section_attention(suite, device, windows, False, flex, 150))
    suite.section("network", 60, lambda: section_network(suite, device, presets, size, batch, patch, 90))
    suite.section("upscale", 45, lambda: section_upscale(device, args.photo, photo_size, suite.left()))
    suite.section("attention_train", 45, lambda: section_attention(suite, device, train_windows, True, False, 0))
    statuses = {name: s["status"] for name, s in suite.report["sections"].items()}
    suite.log(f"done: {statuses} -> {suite.out}")
    return 0 if all(s == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
