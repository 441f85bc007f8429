"""`ribsr upscale --ray ADDRESS`: the local plan and per-file work, scheduled by Ray Data instead of a loop.

Only the scheduling differs from a local run. The driver plans with `plan_jobs` (same outputs, names,
skip and safety rules) and hands Ray a dataset of *paths* (input, output), never decoded pixels: Ray's own
image reader drops EXIF/ICC and 16-bit samples. A pool of actors (`ActorPoolStrategy(size=N)`) each load
the model once and run `upscaling.process` on one file per task, the function a local run calls, so the
read -> upscale -> atomic write path and its one-line failures are the same. Each task returns one status
row (the local `--json` row); the driver fills its Job from it as rows arrive, which drives the progress bar,
the summary and the JSON report exactly as locally.

Faults: Ray Data restarts a dead actor and retries its task. Writes are temporary file + rename, so a
retried file is written whole or not at all; a dead attempt can leave only a hidden `.NAME.*.tmp` beside
the target, which the driver removes once every row is in. Inputs and outputs must be on storage every
worker sees (the same paths on every node).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ribsr_cli.engine.runner import RunOptions
from ribsr_cli.upscaling import Job, UsageError

INSTALL_HINT = 'pip install "ribsr[ray]"'
# Test hook: "FILE_NAME|MARKER_PATH" makes the worker that writes FILE_NAME die (os._exit) after its
# temporary file is written and before the rename, once: the first attempt creates MARKER_PATH.
CRASH_ENV = "RIBSR_TEST_RAY_EXIT_ON"


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a UsageError that says how to install the optional extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (the `ray` package without the [data] extra lacks pandas/pyarrow)
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Data, an optional extra ({exc.name or 'ray'} is missing): "
                         f"{INSTALL_HINT}") from None
    return ray


def connect(address: str) -> bool:
    """Attach to (or start) the Ray runtime; True when this call started it, so the caller shuts it down.

    `local` starts a runtime inside this process's session on this machine; `auto` and `ray://host:port`
    attach to a running cluster. A runtime already initialised (a notebook, the tests) is used as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == "local":
            ray.init(**options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--ray {address}: cannot attach to a Ray cluster ({first}); start one with "
                         "`ray start --head`, or use --ray local") from None
    return True


@dataclass
class WorkerSettings:
    """What every actor needs to load the model and process files: all picklable, no console, no model.

    The model is named as the user named it (`-m`, `--arch`, `--denoise`), so each actor finds it in its own
    catalog the way the driver did; each actor resolves `options` itself (device `auto` on a GPU worker is
    that worker's GPU)."""

    model: str | None
    scale: int
    arch: str | None
    denoise: float | None
    options: RunOptions
    outscale: float | None
    fmt: str
    quality: int
    max_pixels: int
    threads: int = 1


class UpscaleWorker:
    """One Ray Data actor: the model is loaded once in __init__; each call processes a batch of planned jobs."""

    def __init__(self, settings: WorkerSettings) -> None:
        import torch

        from ribsr_cli.engine.runner import load_upscaler

        torch.set_num_threads(max(1, settings.threads))
        self.settings = settings
        self.upscaler = load_upscaler(settings.model, settings.scale, settings.options, arch=settings.arch,
                                      denoise=settings.denoise)
        for note in self.upscaler.report.notes:  # a foreign model's precision fallback (the driver said it too)
            print(f"warning {note}", file=sys.stderr)
        self._crash_on = _install_crash_hook()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ribsr_cli.upscaling import process

        rows = []
        for source, output in zip(batch["input"], batch["output"]):
            job = Job(Path(str(source)), Path(str(output)))
            if self._crash_on is not None:
                self._crash_on(job)
            process(job, self.upscaler, outscale=self.settings.outscale, fmt=self.settings.fmt,
                    quality=self.settings.quality, max_pixels=self.settings.max_pixels)
            rows.append(json.dumps(job.as_dict()))
        return {"index": np.asarray(batch["index"]), "row": np.asarray(rows, dtype=object)}


def _install_crash_hook() -> Callable[[Job], None] | None:
    """The CRASH_ENV test hook, or None. Armed for the named file's first attempt only, it lets the
    encoder fill the temporary file and then kills the process before the rename: the worst moment."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    name, marker = spec.split("|", 1)
    from ribsr_cli.imaging import io_write

    original = io_write._atomic_write
    armed = {"now": False}

    def atomic_write(path: Path, encode: Callable, out: Any) -> None:
        def encode_then_die(f: Any, data: Any) -> None:
            encode(f, data)
            f.flush()
            os._exit(1)

        original(path, encode_then_die if armed["now"] else encode, out)

    def arm(job: Job) -> None:
        if job.source.name != name:
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # a retry: let it through
        armed["now"] = True

    io_write._atomic_write = atomic_write
    return arm


def cpus_per_worker(ray: Any, workers: int) -> int:
    """The cluster's CPUs shared out among the workers (at least one each): each actor reserves that many
    and runs torch on as many threads, so N workers never oversubscribe the cores a single process would use."""
    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1, total // max(1, workers))


def upscale_on_ray(jobs: list[Job], settings: WorkerSettings, *, address: str, workers: int) -> Iterator[Job]:
    """Run the pending `jobs` on Ray; yields each one, filled from its status row, as the rows arrive.

    Jobs that are not pending (skipped, failed while planning) never reach Ray. Nothing to do starts no
    runtime at all, so a finished batch re-run costs nothing."""
    pending = [j for j in jobs if j.status == "pending"]
    if not pending:
        return
    ray = import_ray()
    started = connect(address)
    try:
        from ray.data import ActorPoolStrategy, DataContext

        for name in ("ray", "ray.data"):  # ribsr's own bar and summary report the run; Ray's INFO lines interleave
            logging.getLogger(name).setLevel(logging.ERROR)
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        workers = min(workers, len(pending))  # an idle actor would still hold its CPUs and its model
        threads = cpus_per_worker(ray, workers)
        settings = WorkerSettings(**{**settings.__dict__, "threads": threads})
        device = settings.options.device
        gpus = 1 if device.startswith("cuda") or (
            device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1) else 0
        items = [{"index": i, "input": str(job.source), "output": str(job.output)} for i, job in enumerate(pending)]
        hook = {CRASH_ENV: os.environ[CRASH_ENV]} if os.environ.get(CRASH_ENV) else {}
        extra = {"runtime_env": {"env_vars": hook}} if hook else {}
        # one file per block and per task: a retry after a dead actor redoes one file, and files balance out
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            UpscaleWorker, fn_constructor_args=(settings,), batch_size=1, batch_format="numpy",
            compute=ActorPoolStrategy(size=workers), num_cpus=threads, num_gpus=gpus, **extra)
        for row in dataset.iter_rows():
            job = pending[int(row["index"])]
            fill_from_row(job, json.loads(row["row"]))
            yield job
        remove_stale_temporaries(pending)
    finally:
        if started:
            ray.shutdown()


def fill_from_row(job: Job, row: dict[str, Any]) -> None:
    """Copy a worker's status row (Job.as_dict) into the driver's Job, the one the report lists."""
    job.status = row["status"]
    job.reason = row["error"] or ""
    job.in_size = tuple(row["input_size"]) if row["input_size"] else None
    job.out_size = tuple(row["output_size"]) if row["output_size"] else None
    job.seconds = float(row["seconds"])
    job.warnings = list(row["warnings"])
    job.kernels = list(row["kernels"])
    job.tile = row["tile"]
    job.damage = row.get("damage_read")


def remove_stale_temporaries(jobs: list[Job]) -> list[Path]:
    """Delete the hidden `.NAME.*.tmp` a killed attempt left beside a target (the io layer's temporary
    name); called once every row is in, when no attempt of this run can still be writing. Returns them."""
    removed = []
    for job in jobs:
        if job.output is None or not job.output.parent.is_dir():
            continue
        for temp in job.output.parent.glob(f".{glob.escape(job.output.name)}.*.tmp"):
            try:
                temp.unlink()
                removed.append(temp)
            except OSError:
                pass
    return removed
