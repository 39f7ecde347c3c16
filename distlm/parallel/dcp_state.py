"""Model + optimizer state through torch.distributed.checkpoint (DDP and FSDP2 share it).

Each rank writes its own shards; DCP reshards on load, so a checkpoint resumes at another world
size and under either strategy. Loading goes through `safe_dcp_load`: no arbitrary unpickling.

`async_save_dcp` (checkpoint.async_save) copies the state and returns at once; torch's writer
thread plans and writes the files. Its collectives run on `checkpoint_group()`, a gloo group of
its own, so that they never interleave with the training thread's collectives on the default
group (two threads issuing collectives on one group deadlock or mismatch).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

# torch.distributed.checkpoint is imported where it is used: importing it costs ~1.3 s of a
# ~3 s start-up (issue 11), and a run that never saves or resumes never needs it


def dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{"model": ..., "optim": ...} in DCP's canonical (FQN-keyed, possibly sharded) form."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(dcp_state(model, optimizer), checkpoint_id=str(path))


def async_save_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> Future:
    """Copy the state (the only stall) and write it from a background thread; the Future
    completes when this rank's files are written and fsynced (FileSystemWriter's default)."""
    from torch.distributed.checkpoint import async_save

    return async_save(
        dcp_state(model, optimizer),
        checkpoint_id=str(path),
        process_group=checkpoint_group(),
        async_stager=_staging(),
    )


_stager = None


def _staging():
    """One stager for the process: it keeps its CPU copy of every tensor between saves, so a
    save after the first only copies into memory it already has (the first also allocates and
    faults in pages: 3x the stall of a synchronous save for model=tiny on CPU). The cost is one
    resident copy of model + optimizer state; it is reused only after the previous write ended
    (CheckpointManager.save waits for it first)."""
    global _stager
    if _stager is None:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        cuda = torch.cuda.is_available()  # pinned buffers speed up device-to-host copies
        _stager = DefaultStager(StagingOptions(cuda, False, False, False))
    return _stager


_group: tuple[object, dist.ProcessGroup] | None = None  # (the default group it was made for, it)


def checkpoint_group() -> dist.ProcessGroup | None:
    """A gloo group of all ranks for background checkpoint work (a collective on first use);
    one per default group, so a new process group gets a new one. None without a group."""
    global _group
    if not dist.is_initialized():
        return None
    if _group is None or _group[0] is not dist.group.WORLD:  # the old one died with its parent
        _group = (dist.group.WORLD, dist.new_group(backend="gloo"))
    return _group[1]


def load_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from distlm.checkpoint.safe_load import safe_dcp_load  # lazy: checkpoint imports parallel

    state = dcp_state(model, optimizer)
    safe_dcp_load(state, path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
