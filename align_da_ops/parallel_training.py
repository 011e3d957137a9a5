"""Data-parallel training under torchrun (DistributedDataParallel); one plain process by default.

`launch(device)` reads torchrun's RANK, WORLD_SIZE and LOCAL_RANK: without
them it yields `SINGLE` (rank 0 of 1, no process group, the trainers behave
exactly as before); with them it initialises the default process group
(gloo on CPU, nccl on CUDA with this rank on cuda:LOCAL_RANK), yields this
rank's `World` and destroys the group on exit. The trainers then wrap their
network with `wrap` (DDP averages the gradients over ranks), take their
share of each epoch from `streaming.ChunkShuffleSampler(rank, world_size)`
with `per_rank_batch(global batch)` windows per rank, average the epoch
loss with `mean_over_ranks`, and write checkpoints and logs on the main rank
only, from the unwrapped module (`unwrap`: keys without DDP's `module.` prefix,
the single-process format). With n windows divisible by the world size, a run
on W ranks takes the same global batches as one process and its weights
match up to float summation order.

The command that works (here `python -m align_da_ops.cli` runs the CLI's main):

    torchrun --standalone --nproc_per_node 2 -m align_da_ops.cli train forecast CONFIG --batch-size 8 ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from align_da_ops.errors import ConfigError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The rank that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def single(device: torch.device = torch.device("cpu")) -> World:
    """One plain process: no process group."""
    return World(0, 1, 0, device)


def under_torchrun() -> bool:
    return all(name in os.environ for name in ENV)


@contextlib.contextmanager
def launch(device: torch.device) -> Iterator[World]:
    """This process's World: torchrun's process group when launched by torchrun (torn down on exit), else `single`."""
    if not under_torchrun():
        yield single(device)
        return
    rank, world_size, local_rank = (int(os.environ[name]) for name in ENV)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    try:
        yield World(rank, world_size, local_rank, device)
        dist.barrier()  # every rank done before teardown: gloo aborts a process whose peers tear down under it
    finally:
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """`module` in DDP when distributed, else itself."""
    if not world.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[world.device.index] if world.device.type == "cuda" else None)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP (what checkpoints save), or `module` itself."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def per_rank_batch(global_batch: int, world: World) -> int:
    """Samples per rank and step; the global batch must divide evenly among the ranks."""
    if global_batch % world.world_size:
        raise ConfigError(f"batch size {global_batch} is not divisible by the {world.world_size} training processes; "
                          "give a multiple of the world size")
    return global_batch // world.world_size


def mean_over_ranks(value: float, world: World) -> float:
    """The mean of a scalar over all ranks (the value itself in one process)."""
    if not world.distributed:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return float(t) / world.world_size
