"""Data-parallel runs under torchrun: process group set-up and the few collective helpers the CLI needs.

Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); gloo on CPU, nccl on CUDA. Only rank 0
writes files; what is measured (latency tables) is measured on rank 0 and broadcast.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def setup(device: str) -> tuple[int, int]:
    """(rank, world size); initialises the default process group when launched by torchrun with > 1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: str) -> str:
    """`cuda` becomes this process's GPU under torchrun."""
    if device == "cuda" and dist.is_initialized():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: nccl carries CUDA tensors only, on this process's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (any picklable value made by bsnet itself, never read from a file)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def sum_over_ranks(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":  # else nccl guesses the GPU from the rank, and a wrong guess hangs
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
