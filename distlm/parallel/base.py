"""The one small interface every parallelism strategy implements.

The training loop calls only these methods, so it has no `if strategy == ...` branch. A strategy
applies itself to an unchanged model (the model file knows nothing of parallelism).

Loss scaling contract: the trainer passes `backward()` the micro-batch loss already divided by the
number of accumulation steps; a strategy must not scale it again.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import torch
from torch import nn

from distlm.config import Config, Derived
from distlm.parallel.env import DistEnv
from distlm.parallel.optimizer import (  # noqa: F401 (adamw_param_groups: re-exported)
    adamw_param_groups,
    build_optimizer,
    set_lr,
)


class Strategy(ABC):
    """Wraps one model and its optimizer for one parallelism scheme."""

    name: str = "base"

    def __init__(self, cfg: Config, derived: Derived, env: DistEnv):
        self.cfg, self.derived, self.env = cfg, derived, env
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @abstractmethod
    def setup(self, model: nn.Module) -> nn.Module:
        """Wrap or shard `model` (already on the device, initialised identically on every rank)."""

    @abstractmethod
    def build_optimizer(self) -> torch.optim.Optimizer:
        """Create AdamW over the set-up model (decay / no-decay groups) and keep it."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @abstractmethod
    def step(self) -> float:
        """Clip to train.grad_clip, step and zero grads; return the global pre-clip grad norm.

        If the norm is not finite the optimizer step is skipped (grads are zeroed): the caller
        counts and logs the skip.
        """

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Context for accumulation micro-steps that must not all-reduce gradients."""
        return contextlib.nullcontext()

    def set_lr(self, lr: float) -> None:
        assert self.optimizer is not None
        set_lr(self.optimizer, lr)

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write model + optimizer state under directory `path` (every rank calls this)."""

    def save_async(self, path: Path) -> Future:
        """Start `save(path)` in the background (checkpoint.async_save): the state is copied
        before this returns; the Future completes once this rank's files are on disk."""
        raise NotImplementedError(f"parallel.strategy={self.name} saves synchronously only")

    @abstractmethod
    def load(self, path: Path) -> None:
        """Load model + optimizer state from directory `path` (every rank calls this)."""

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded model weights (every rank calls; rank 0's result is complete)."""
        assert self.model is not None
        state = unwrap(self.model).state_dict()
        return {clean_fqn(k): v.detach().cpu() for k, v in state.items()}


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP / DeepSpeed / compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


# wrapper modules that transforms insert (activation checkpointing, torch.compile)
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_fqn(name: str) -> str:
    """A parameter name as the unwrapped model has it: `layers.0.attn.qkv.weight`."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


build_adamw = build_optimizer  # its former name; distlm/parallel/optimizer.py builds them all


def train_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """train.dtype resolved: bf16 if asked for, or `auto` on CUDA; fp32 otherwise."""
    if cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def params_with_grad(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in model.parameters() if p.grad is not None)
