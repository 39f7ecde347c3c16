"""Process-group set-up: one function for plain `python`, torchrun and slurm-launched torchrun."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distlm.lifecycle import die_with_parent


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        from distlm.config import ConfigError

        raise ConfigError("train.device=cuda but torch sees no CUDA device (use auto or cpu)")
    if requested != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def launch_world_size() -> int:
    """The world size the launcher set (torchrun / slurm: WORLD_SIZE), 1 for plain `python`."""
    return int(os.environ.get("WORLD_SIZE", 1))


_private_group = False  # True once this process made its own one-process group


def init_distributed(device: str = "auto", timeout_minutes: int = 10) -> DistEnv:
    """Join (or create, at world size 1) the default process group: nccl on CUDA, gloo on CPU.

    Always having a process group keeps every strategy on one code path, DeepSpeed included.
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: die with the agent
        die_with_parent()
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = launch_world_size()
    dev = pick_device(device, local_rank)
    if not dist.is_initialized():
        global _private_group
        if _private_group or "MASTER_ADDR" not in os.environ:
            # plain `python`: a private one-process group, on a fresh port each time
            _private_group = True
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        # gloo serves CPU tensors (object collectives, checkpoint planning) even on CUDA
        backend = "cuda:nccl,cpu:gloo" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistEnv(rank, local_rank, world_size, dev)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Average a Python float over ranks (for logging)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()
