"""Process groups for multi-GPU and multi-node training: torchrun detection, spawning, gradient all-reduce."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "launched_by_torchrun", "launch", "all_reduce_grads", "all_gather_objects", "barrier",
           "cpu_threads_per_process"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.launch) set these for every process, on every node."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def cpu_threads_per_process(local_processes: int) -> int:
    """Intra-op threads for each of `local_processes` CPU training processes on this machine.

    An explicit OMP_NUM_THREADS wins; otherwise the cores are shared out, so N processes
    never run N times the cores' threads (oversubscribed, each step waits on the slowest).
    """
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))


def _device_for(local_rank: int, use_cuda: bool, local_processes: int = 1) -> torch.device:
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if local_processes > 1:
        torch.set_num_threads(cpu_threads_per_process(local_processes))
    return torch.device("cpu")


def _init_group(rank: int, world_size: int, init_method: str, use_cuda: bool) -> None:
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)


def _spawned_worker(local_rank: int, fn: Callable[[DistInfo], Any], world_size: int, init_file: str,
                    use_cuda: bool) -> None:
    _init_group(local_rank, world_size, f"file://{init_file}", use_cuda)
    try:
        fn(DistInfo(local_rank, world_size, local_rank, _device_for(local_rank, use_cuda, world_size)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable[[DistInfo], Any], num_procs: int, use_cuda: bool) -> None:
    """Run fn(DistInfo) in every training process.

    Under torchrun: this process is one rank of any number of nodes (env:// rendezvous).
    Otherwise: `num_procs` processes on this machine (one per GPU; on a CPU, gloo processes),
    or just this process when num_procs == 1.
    """
    if launched_by_torchrun():
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        _init_group(rank, world, "env://", use_cuda)
        try:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            fn(DistInfo(rank, world, local, _device_for(local, use_cuda, local_world)))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return
    if num_procs == 1:
        fn(DistInfo(0, 1, 0, _device_for(0, use_cuda)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.abspath(os.path.join(tmp, ".torch_distributed_init"))
        torch.multiprocessing.spawn(_spawned_worker, args=(fn, num_procs, init_file, use_cuda), nprocs=num_procs)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], world_size: int) -> Optional[torch.Tensor]:
    """Average gradients over processes in one flat all-reduce; returns the flat gradient (or None)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return None
    flat = torch.cat([p.grad.flatten() for p in params])
    if world_size > 1:
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()
    return flat


def all_gather_objects(obj: Any, world_size: int) -> list:
    """Every rank's `obj` (a list of length world_size); [obj] without a process group."""
    if world_size == 1:
        return [obj]
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
