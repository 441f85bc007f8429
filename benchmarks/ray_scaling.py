"""Throughput of `ribsr upscale --ray local` against plain `ribsr upscale` on the same folder of photos.

Three runs of the real command, each in a fresh process on a fresh output folder: plain (one process),
`--ray local --workers 1` (the overhead of Ray: runtime start, one actor, rows through the driver) and
`--ray local --workers 2` (scaling). Throughput is output megapixels over the command's wall time, as
the summary table reports it; the wall time includes Ray's start-up, which a long batch amortises.

    python3 benchmarks/ray_scaling.py                   # the example photos, x2, the shipped model
    python3 benchmarks/ray_scaling.py FOLDER --json results.json

The machine's core count and load average are printed with the numbers: on a 2-core machine with other
work running, 2 workers can at best approach 2x, and a busy core caps them lower.
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

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"plain": [], "ray, 1 worker": ["--ray", "local", "--workers", "1"],
           "ray, 2 workers": ["--ray", "local", "--workers", "2"]}


def run(folder: Path, extra: list[str], scale: int, work: Path) -> dict:
    """One `ribsr upscale` of the folder into a new output folder; its totals and the wall time seen outside."""
    out, report = Path(tempfile.mkdtemp(dir=work)), work / f"report-{time.time_ns()}.json"
    argv = [sys.executable, "-m", "ribsr_cli", "upscale", str(folder), "-o", str(out), "-s", str(scale), "-q",
            "--json", str(report), *extra]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    totals = json.loads(report.read_text())["totals"]
    return {"files": totals["done"], "output_mp": totals["output_megapixels"], "command_s": totals["elapsed_seconds"],
            "wall_s": round(wall, 2), "mp_per_s": round(totals["output_megapixels"] / totals["elapsed_seconds"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=REPO / "examples")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(args.folder, extra, args.scale, Path(tmp)) for name, extra in CONFIGS.items()}
    plain, one, two = (results[k]["command_s"] for k in CONFIGS)
    summary = {"cpus": os.cpu_count(), "load_average_after": [round(x, 2) for x in os.getloadavg()],
               "ray_overhead_1_worker": round(one / plain - 1, 3), "speedup_2_vs_1_worker": round(one / two, 3),
               "runs": results}
    print(f"{args.folder}: {results['plain']['files']} files, {results['plain']['output_mp']:.2f} output MP, "
          f"{summary['cpus']} CPUs, load average {summary['load_average_after']}")
    for name, r in results.items():
        print(f"  {name:15s} {r['command_s']:7.1f} s  {r['mp_per_s']:.3f} output MP/s")
    print(f"  --ray local overhead, 1 worker vs plain: {summary['ray_overhead_1_worker']:+.1%}; "
          f"2 workers vs 1: {summary['speedup_2_vs_1_worker']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
