"""`ribsr train`: flags over `TrainConfig`; the loop itself lives in ribsr_cli.training.trainer.

A bad flag or a missing data/run folder is a `UsageError` (exit status 2, one `error:` line from
`cli.guarded`); a stop by Ctrl-C or kill exits 130 with the checkpoint already on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def command(
    arch: str = typer.Option("ribsr-s", "--arch", "-a", help="Preset name (see `ribsr models`) or JSON/YAML network_g file."),
    scale: int = typer.Option(2, "--scale", "-s", min=2, max=4, help="Upscaling factor."),
    out_dir: Path = typer.Option(Path("runs/ribsr-s-x2"), "--out", "-o", help="Run folder (checkpoints, log.csv)."),
    data_dir: Path = typer.Option(Path("data/prepared"), "--data", help="Prepared HR pool (`ribsr data fetch`, then `ribsr data prepare`)."),
    val_dir: Optional[str] = typer.Option(None, "--val", help="Validation set (monitoring only; default "
                                          "<shared>/benchmarks/Set5, <shared> being $RIBSR_SHARED or ../shared; "
                                          "--val '' trains without validation)."),
    patch: int = typer.Option(48, help="LR patch size."),
    patch_detail: float = typer.Option(
        0.0, "--patch-detail", metavar="REF",
        help="Bias HR crops toward detail: keep a crop with probability (its mean vertical + horizontal luma "
             "step, in levels) / REF, at least 0.1, else draw again (12 ≈ an ordinary photo's texture); "
             "0 = uniform crops. Recorded in the run and kept on resume (--restart to change it)."),
    batch: int = typer.Option(8, help="Batch size."),
    lr: float = typer.Option(2e-3, help="Peak learning rate."),
    total_steps: int = typer.Option(20000, "--steps", help="Length of the cosine schedule."),
    warmup_steps: int = typer.Option(500, "--warmup", help="Linear warm-up steps."),
    max_minutes: float = typer.Option(0.0, "--max-minutes", help="Stop (and checkpoint) after this much training time; 0 = no limit."),
    ckpt_minutes: float = typer.Option(3.0, "--ckpt-minutes", help="Checkpoint interval."),
    val_every: int = typer.Option(500, help="Validate the EMA every N steps."),
    threads: int = typer.Option(1, help="CPU threads (leave a core for other work)."),
    seed: int = typer.Option(0, help="Random seed."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this checkpoint's matching tensors (e.g. a x2 body)."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from the run folder's last.pt if present."),
    degradation: str = typer.Option(
        "bicubic", "--degradation",
        help="How LR patches are made: bicubic (the benchmark convention) or real (random camera-like blur, "
             "resize, noise and JPEG; validation then scores the fixed `eval --degrade real` recipe)."),
    degradation_file: Optional[Path] = typer.Option(
        None, "--degradation-config",
        help="With --degradation real: a JSON object of DegradationConfig fields to change from their defaults "
             "(e.g. {\"camera_prob\": 0.75}); recorded in the run, kept on resume."),
    damage_estimator: Optional[Path] = typer.Option(
        None, "--damage-estimator",
        help="For a damage-conditioned --arch (ribsr-sd): the trained damage estimator "
             "(python3 -m ribsr_cli.training.damage_estimator) built into the network, frozen."),
    damage_told: Optional[str] = typer.Option(
        None, "--damage-told", metavar="truth|estimate|context",
        help="What a damage-conditioned network is told for each patch: truth (the damage drawn, jittered by "
             "about the estimator's error; new runs), estimate (its estimator's reading of the patch) or context "
             "(its estimator's reading of the 128-px LR region the patch is cut from, as run time reads 128-px "
             "crops of the whole image). Kept on resume."),
) -> None:
    from ribsr_cli.errors import RibsrError, UsageError
    from ribsr_cli.training.degrade import DEGRADATIONS, read_degradation_overrides
    from ribsr_cli.training.config import FlagConflict, TrainConfig
    from ribsr_cli.training.stopping import TrainingInterrupted
    from ribsr_cli.training.trainer import train

    if degradation not in DEGRADATIONS:
        raise UsageError(f"--degradation {degradation}", f"choose {' or '.join(DEGRADATIONS)}")
    try:
        overrides = read_degradation_overrides(degradation_file) if degradation_file is not None else {}
    except ValueError as exc:  # unreadable, not an object, an unknown field
        raise UsageError(f"--degradation-config {degradation_file}", str(exc)) from None
    try:
        cfg = TrainConfig(arch=arch, scale=scale, out_dir=str(out_dir), data_dir=str(data_dir),
                          val_dir=val_dir,
                          patch=patch, batch=batch, lr=lr, total_steps=total_steps, warmup_steps=warmup_steps,
                          max_minutes=max_minutes, ckpt_minutes=ckpt_minutes, val_every=val_every, threads=threads,
                          seed=seed, init_from=str(init_from or ""), degradation=degradation,
                          degradation_overrides=overrides, damage_estimator=str(damage_estimator or ""),
                          patch_detail=patch_detail, damage_told=damage_told or "")
    except FlagConflict as exc:  # TrainConfig's checks of values that do not fit together
        value = {"--degradation-config": degradation_file, "--damage-estimator": damage_estimator,
                 "--patch-detail": patch_detail, "--damage-told": damage_told}[exc.flag]
        raise UsageError(f"{exc.flag} {value}", exc.reason) from None
    try:
        train(cfg, resume=resume, log=lambda m: typer.echo(m))
    except RibsrError:  # a checkpoint, manifest ... error already carries its path and exit status
        raise
    except FileNotFoundError as exc:  # a missing data or run folder
        raise UsageError(exc.filename or "", exc.strerror or str(exc)) from None
    except ValueError as exc:  # flags that do not fit together (batch vs GPUs, --steps vs --max-minutes)
        raise UsageError(str(exc)) from None
    except TrainingInterrupted as exc:  # the checkpoint is already on disk
        typer.echo(str(exc), err=True)
        raise typer.Exit(130) from None
