"""Training under torchrun: one process per device, each on its slice of one global batch, ranks in step.

Without torchrun (WORLD_SIZE unset or 1) every function here is the identity of the 1-process run, so the
trainer has one code path. NCCL joins CUDA ranks, gloo CPU ranks (tests/test_ddp.py runs two on the CPU).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ribsr_cli.engine.runtime import pick_training_device


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_device(device: torch.device | str | None = None) -> torch.device:
    """`device`, else cuda when available, else the CPU (`runtime.pick_training_device`: never MPS); a bare
    "cuda" means this rank's GPU (LOCAL_RANK, 0 without torchrun)."""
    device = pick_training_device("auto" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def join_process_group(device: torch.device, batch: int) -> tuple[int, int]:
    """(rank, world size): the process group joined under torchrun, (0, 1) without. `batch` is the global
    batch; it must split into equal slices (`rank_share`), or nothing starts."""
    if not launched_by_torchrun():
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL init, or every rank's communicator lands on GPU 0
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if batch % world:
        torch.distributed.destroy_process_group()
        raise ValueError(f"--batch {batch} is the global batch: it must be a multiple of the {world} processes")
    return rank, world


def leave_process_group(distributed: bool, finished: bool = True) -> None:
    """Destroy the process group, after a barrier when every rank `finished` its loop.

    Why the barrier: a rank that destroys its gloo pairs while another is still in its last collective or
    checkpoint can abort the process at exit ("terminate called without an active exception", seen in CI on
    1 run in 3). After an error no barrier: the other ranks may never arrive, and a hang hides the error."""
    if not distributed:
        return
    try:
        if finished:
            torch.distributed.barrier()
    finally:  # a barrier that fails (a peer died) still leaves the group
        torch.distributed.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, distributed: bool) -> nn.Module:
    """The module the step runs: DDP around `model` under torchrun (gradients averaged across ranks), else `model`."""
    if not distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_share(lr: torch.Tensor, hr: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s contiguous slice of a global (lr, hr) batch that every rank drew from the same seeded
    stream. With equal slices, DDP's gradient average equals the gradient of the mean L1 over the whole
    batch (the model has no BatchNorm), so N processes follow the 1-process run's curve step for step; and
    a checkpoint holds the one stream every rank resumes from."""
    return rank_slice(lr, rank, world), rank_slice(hr, rank, world)


def rank_slice(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s contiguous equal slice of a global batch along its first axis (the whole of it alone)."""
    if world == 1:
        return batch
    share = batch.shape[0] // world
    return batch[rank * share:(rank + 1) * share]


def global_mean(value: torch.Tensor, distributed: bool) -> float:
    """The mean of a per-rank scalar over all ranks (the whole batch's loss, for the log); as is without DDP."""
    if not distributed:
        return value.item()
    total = value.detach().double().reshape(1).clone()
    torch.distributed.all_reduce(total)
    return float(total) / torch.distributed.get_world_size()


def agree_across_ranks(stop: bool, lr: float, schedule_end: int, device: torch.device,
                       distributed: bool) -> tuple[bool, float, int]:
    """(stop, lr, schedule end) every rank uses for the next step: rank 0's learning rate and schedule (its
    clock alone counts, validation time included), and a stop when any rank asks (rank 0's clock or step
    limit, a signal anywhere). All ranks thus leave the loop at the same step; none waits in an all-reduce.

    One MAX all-reduce: ranks other than 0 send -1 for lr and schedule end, which never win."""
    if not distributed:
        return stop, lr, schedule_end
    leader = torch.distributed.get_rank() == 0
    t = torch.tensor([float(stop), lr if leader else -1.0, float(schedule_end) if leader else -1.0],
                     dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    stop_all, lr_all, end_all = t.tolist()
    return stop_all > 0, lr_all, int(end_all)
