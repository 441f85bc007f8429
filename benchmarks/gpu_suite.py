"""One-shot GPU evidence for the paper's claim, in under 7 minutes on one CUDA GPU.

    python benchmarks/gpu_suite.py --fixtures DIR --out FILE.json [--budget-s 420] [--photo PHOTO.jpg]
    python benchmarks/gpu_suite.py --cpu-smoke --fixtures DIR --out FILE.json  # the same code on CPU, toy sizes

Nothing is read from outside the repository unless named on the command line
(a borrowed GPU machine has only the repository): `--fixtures` is the folder of
reference fixtures (sst_reference/*.pt), `--photos` the images the synthetic
12 MP photo is made from (default: the repository's examples/). The JSON goes
to `--out`, rewritten after every section (and after every attention window)
so a crash or a kill still leaves what was measured:

- env:            `ribsr info`'s environment plus the benchmark's (device, flags, methods);
- parity:         every fixture on the GPU in fp32 (TF32 off, flags recorded) and bf16 vs the CPU
                  fp32 reference output: max abs error, kernels that ran; fp32 above 1e-4 is an error;
- attention:      the `ribsr bench` attention table, windows 16..96, bf16, every kernel, flex; the RIB
                  correctness check first: if it fails, the section fails;
- network:        RIB vs RPB, SST-light and SST (base) at 1280x720 output: inference and one
                  training step (latency and peak memory);
- upscale:        `ribsr upscale` wall time on a 12 MP photo at 2x (an image enlarged to
                  4000x3000 with PIL unless --photo is given);
- attention_train: the attention table again, forward + backward (last: first to go when short).

Each section is wrapped: a failure is recorded (error and traceback) and the
next section runs; errors inside a section (one window, one fixture) make it
"partial". The budget counts from the start of the process (imports included):
a section whose usual duration no longer fits is recorded as skipped. Exit
status: 0 when no section failed or was partial, 1 otherwise, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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

from ribsr_cli import bench as bm  # noqa: E402
from ribsr_cli.commands.info import environment  # noqa: E402
from ribsr_cli.engine import attention_report, build_model, configure_attention  # noqa: E402
from ribsr_cli.engine.kernels import available_kernels  # noqa: E402
from ribsr_cli.engine.runtime import TF32Off, precision_name  # noqa: E402
from ribsr_cli.fileutil import atomic_write_text  # noqa: E402

EXAMPLES = REPO / "examples"
SECTIONS = ("env", "parity", "attention", "network", "upscale", "attention_train")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
FP32_PARITY_LIMIT = 1e-4


def process_age_s() -> float:
    """Seconds since this process started (interpreter start-up and the torch import included); 0 if unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class SectionSkipped(Exception):
    """A section that cannot run with the inputs given (recorded as skipped, with the reason)."""


class Suite:
    """Runs sections in order, each guarded, and keeps the JSON on disk current."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter() - process_age_s()
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
                data = fn()
                errors = data.get("errors") if isinstance(data, dict) else None
                record = {"status": "partial" if errors else "ok", "data": data}
            except SectionSkipped as exc:
                record = {"status": "skipped", "reason": str(exc)}
            except Exception as exc:  # keep going: one broken section must not lose the others
                record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc(limit=8)}
                self.log(f"{name}: FAILED {record['error'][:200]}")
            record["seconds"] = round(time.perf_counter() - t0, 1)
            self.log(f"{name}: {record['status']} in {record['seconds']} s")
        self.report["sections"][name] = record
        self.save()

    def keep_partial(self, name: str, data: dict[str, Any]) -> None:
        """Store what a running section has so far, so a crash or kill later in it keeps it."""
        self.report["sections"][name] = {"status": "running", "data": data}
        self.save()

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out, json.dumps(self.report, indent=2, default=str))  # a kill keeps the last file


# ---- sections -------------------------------------------------------------------------


def section_env(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {**environment(), **bm.bench_environment(device, dtype)}


def tf32_flags() -> dict[str, bool]:
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


def section_parity(device: torch.device, fixtures: Path | None) -> dict[str, Any]:
    """Fixture outputs on this device vs the CPU fp32 reference (and vs the reference's own bf16).

    Both passes run with TF32 off, as the reference was made (CPU fp32): cuDNN's default TF32
    convolutions alone move these outputs by ~1e-3, ten times the fp32 limit. The flags that were in
    force are recorded per pass.
    """
    if fixtures is None:
        raise SectionSkipped("no --fixtures given")
    paths = sorted(fixtures.glob("*.pt"))
    if not paths:
        raise FileNotFoundError(f"no fixtures (*.pt) in {fixtures}")
    results: dict[str, Any] = {}
    errors: list[str] = []
    for path in paths:
        ref = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(ref["config"])
        model.load_state_dict(ref["state_dict"], strict=True)
        model = model.to(device).eval()
        x = ref["input"].to(device)
        rows = {}
        # bf16 as the reference makes it: attention operands in bf16, the rest fp32.
        for label, compute in (("fp32", None), ("bf16", torch.bfloat16)):
            configure_attention(model, compute_dtype=compute)
            with torch.no_grad(), TF32Off():
                flags = tf32_flags()
                out = model(x).float().cpu()
            rows[label] = {
                "max_abs_err_vs_fp32_reference": (out - ref["output"]).abs().max().item(),
                "max_abs_err_vs_reference_bf16": (out - ref["output_bf16"]).abs().max().item(),
                "attention": attention_report(model),
                "tf32": flags,
            }
        reference_gap = (ref["output_bf16"] - ref["output"]).abs().max().item()
        fp32_err = rows["fp32"]["max_abs_err_vs_fp32_reference"]
        results[path.stem] = {"modes": rows, "reference_bf16_vs_fp32": reference_gap,
                              "fp32_ok": fp32_err <= FP32_PARITY_LIMIT}
        if not fp32_err <= FP32_PARITY_LIMIT:
            errors.append(f"{path.name}: fp32 max abs error {fp32_err:.3g} > {FP32_PARITY_LIMIT:g}")
    return {"fixtures": str(fixtures), "results": results, "errors": errors}


def section_attention(suite: Suite, name: str, device: torch.device, windows: list[int], train: bool, flex: bool,
                      reserve_s: float, target_s: float = 0.5, corrupt: bool = False) -> dict[str, Any]:
    """The `ribsr bench` attention table (bf16 on CUDA), after the RIB check, one window at a time.

    A failed RIB check fails the section (no rows would be worth having). Each window is guarded and
    saved as it finishes, so one window's error or a kill keeps the others; windows left when only
    `reserve_s` of the budget remains are skipped, not half-run. `corrupt` breaks RIB on purpose (tests).
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = bm.CoreShape.from_config(bm.resolve_preset("SST-light")[1])
    kernels = ["auto", *available_kernels(device)]
    check = bm.check_rib(shape, windows, device, dtype, kernels, corrupt=corrupt)
    if not check.ok:
        raise bm.RibMismatch(check)
    env: dict[str, Any] = {}
    data: dict[str, Any] = {"check": {**check.as_json(), "details": check.details}, "rows": [],
                            "windows_skipped_for_budget": [], "errors": {}}
    for ws in windows:
        if suite.left() < reserve_s:
            data["windows_skipped_for_budget"].append(ws)
            continue
        opts = bm.Options(windows=[ws], device=str(device), dtype=precision_name(dtype), train=train,
                          all_kernels=True, flex=flex, target_s=target_s, corrupt_rib=corrupt)
        try:
            rows = bm.run_attention(opts, shape, device, dtype, env, suite.log)
            data["rows"] += [{**r.as_json(), "rpb_over_rib": c.rpb_over_rib, "mem_rpb_over_rib": c.mem_rpb_over_rib,
                              "rib_over_nope": c.rib_over_nope, "note": c.note}
                             for r, c in zip(rows, bm.compare_attention(rows))]
        except Exception as exc:  # keep the other windows
            data["errors"][str(ws)] = f"{type(exc).__name__}: {exc}"
            suite.log(f"{name}: window {ws} FAILED {data['errors'][str(ws)][:200]}")
            bm.release_memory(device)
        data["profiler_attention_kernels"] = env.get("profiler_attention_kernels")
        suite.keep_partial(name, data)
    return data


def section_network(suite: Suite, name: str, device: torch.device, presets: list[str], size: tuple[int, int],
                    batch: int, patch: int, reserve_s: float, target_s: float = 1.0) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    opts = bm.Options(size=size, device=str(device), dtype=precision_name(dtype), train=True, batch=batch,
                      patch=patch, target_s=target_s)
    out: dict[str, Any] = {"errors": {}}
    for preset in presets:
        if suite.left() < reserve_s:
            out[preset] = {"skipped": f"budget: {suite.left():.0f} s left"}
            continue
        try:
            rows = bm.run_network(opts, device, dtype, suite.log, preset=preset)
            out[preset] = [{**r.as_json(), "rpb_over_this": ratio}  # as_json keeps a skip reason out of "kernel"
                           for r, ratio in zip(rows, bm.compare_network(rows))]
        except Exception as exc:  # SST base may not fit a small GPU: keep SST-light's rows
            out["errors"][preset] = out[preset] = f"{type(exc).__name__}: {exc}"
        bm.release_memory(device)
        suite.keep_partial(name, out)
    return out


def photo_sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in PHOTO_SUFFIXES)


def make_photo(path: Path, size: tuple[int, int], sources: list[Path]) -> str:
    """A photo-like JPEG: the largest source image cropped to 4:3, enlarged with Lanczos, light sensor noise."""
    import numpy as np
    from PIL import Image

    def area(p: Path) -> int:
        with Image.open(p) as im:
            return im.size[0] * im.size[1]

    source = max(sources, key=area)
    img = Image.open(source).convert("RGB")
    w, h = img.size
    crop_w, crop_h = min(w, h * 4 // 3), min(h, w * 3 // 4)
    img = img.crop(((w - crop_w) // 2, (h - crop_h) // 2, (w + crop_w) // 2, (h + crop_h) // 2))
    pixels = np.asarray(img.resize(size, Image.LANCZOS), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0.0, 2.0, pixels.shape)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(path, quality=92)
    return source.name


def section_upscale(device: torch.device, photo: Path | None, sources: list[Path], size: tuple[int, int],
                    timeout_s: float) -> dict[str, Any]:
    """Wall time of the real CLI (a fresh process: imports, model load, tiling, encode) on a 12 MP photo."""
    with tempfile.TemporaryDirectory(prefix="ribsr-suite-") as tmp:
        tmp_dir = Path(tmp)
        source = str(photo)
        if photo is None:
            photo = tmp_dir / f"photo_{size[0]}x{size[1]}.jpg"
            source = f"synthetic from {make_photo(photo, size, sources)}"
        report = tmp_dir / "upscale.json"
        cmd = [sys.executable, "-m", "ribsr_cli", "upscale", str(photo), "-o", str(tmp_dir / "out"), "-s", "2",
               "--device", device.type, "--overwrite", "--json", str(report)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(timeout_s, 10))
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"ribsr upscale still running after {exc.timeout:.0f} s (the budget left)") from None
        wall = time.perf_counter() - t0
        data: dict[str, Any] = {"photo": source, "command": " ".join(cmd[1:]), "returncode": proc.returncode,
                                "wall_s": round(wall, 2), "stdout_tail": proc.stdout[-1500:],
                                "stderr_tail": proc.stderr[-1500:]}
        if report.is_file():
            data["report"] = json.loads(report.read_text())
        if proc.returncode != 0:
            data["errors"] = [f"ribsr upscale exited {proc.returncode}"]
        return data


# ---- main -------------------------------------------------------------------------------


def parse_sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where the JSON goes (rewritten after every section)")
    ap.add_argument("--fixtures", type=Path,
                    help="folder of the reference fixtures (sst_reference/*.pt) for parity; without it parity is skipped")
    ap.add_argument("--photos", type=Path, default=EXAMPLES,
                    help="images the synthetic photo is made from (default: the repository's examples/)")
    ap.add_argument("--photo", type=Path, help="a real photo for the upscale section (default: synthetic 4000x3000)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="seconds from process start; sections that no longer fit are skipped (default 420)")
    ap.add_argument("--sections", type=parse_sections, default=list(SECTIONS),
                    help=f"comma-separated subset to run (default all: {','.join(SECTIONS)})")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: run every section's code on CPU at toy sizes, to check the script itself")
    ap.add_argument("--corrupt-rib", action="store_true", help=argparse.SUPPRESS)  # tests: the check must fail
    args = ap.parse_args(argv)
    if args.photo is not None and not args.photo.is_file():
        ap.error(f"--photo {args.photo} does not exist")
    if args.fixtures is not None and not args.fixtures.is_dir():
        ap.error(f"--fixtures {args.fixtures} is not a folder")
    sources = [] if args.photo is not None else photo_sources(args.photos)
    if args.photo is None and "upscale" in args.sections and not sources:
        ap.error(f"--photos {args.photos}: no .png/.jpg images to make the test photo from")
    if args.cpu_smoke:
        device = torch.device("cpu")
        windows, train_windows, presets = [8], [8], ["ribsr-s-x4"]
        size, batch, patch, photo_size, flex, target_s = (128, 72), 1, 16, (400, 300), False, 0.02
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        windows, train_windows, presets = [16, 32, 48, 64, 96], [16, 32, 64], ["SST-light-x4", "SST-x4"]
        size, batch, patch, photo_size, flex, target_s = (1280, 720), 8, 64, (4000, 3000), True, 0.5
    else:
        print("gpu_suite.py needs a CUDA GPU, and torch.cuda.is_available() is False here.\n"
              "For CPU numbers run `ribsr bench`; to check this script's plumbing run it with --cpu-smoke.",
              file=sys.stderr)
        return 2
    suite = Suite(args.out, args.budget_s)
    suite.report["arguments"] = {"fixtures": str(args.fixtures) if args.fixtures else None,
                                 "photos": str(args.photos), "photo": str(args.photo) if args.photo else None,
                                 "cpu_smoke": args.cpu_smoke, "sections": args.sections}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    suite.log(f"device {device} ({bm.device_name(device)}), torch {torch.__version__}, writing {suite.out}")
    # (usual seconds, what to run); reserve: time kept for the sections after this one
    plan: dict[str, tuple[float, Callable[[], Any]]] = {
        "env": (0, lambda: section_env(device, dtype)),
        "parity": (10, lambda: section_parity(device, args.fixtures)),
        "attention": (60, lambda: section_attention(suite, "attention", device, windows, False, flex, 150,
                                                    target_s, corrupt=args.corrupt_rib)),
        "network": (60, lambda: section_network(suite, "network", device, presets, size, batch, patch, 90,
                                                2 * target_s)),
        "upscale": (45, lambda: section_upscale(device, args.photo, sources, photo_size, suite.left())),
        "attention_train": (45, lambda: section_attention(suite, "attention_train", device, train_windows, True,
                                                          False, 0, target_s, corrupt=args.corrupt_rib)),
    }
    for name in SECTIONS:
        if name in args.sections:
            suite.section(name, *plan[name])
    statuses = {name: s["status"] for name, s in suite.report["sections"].items()}
    suite.log(f"done: {statuses} -> {suite.out}")
    return 0 if all(s in ("ok", "skipped") for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
