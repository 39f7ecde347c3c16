"""Model + optimizer state through torch.distributed.checkpoint (DDP and FSDP2 share it).

Each rank writes its own shards; DCP reshards on load, so a checkpoint resumes at another world
size and under either strategy. Loading goes through `safe_dcp_load`: no arbitrary unpickling.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{"model": ..., "optim": ...} in DCP's canonical (FQN-keyed, possibly sharded) form."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    dcp.save(dcp_state(model, optimizer), checkpoint_id=str(path))


def load_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    from distlm.checkpoint.safe_load import safe_dcp_load  # lazy: checkpoint imports parallel

    state = dcp_state(model, optimizer)
    safe_dcp_load(state, path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
