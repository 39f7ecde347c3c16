"""Parallelism: each strategy is one module applying itself to an unchanged model.

strategy = build_strategy(cfg, derived, env)
model = parallelize(model, cfg, strategy)      # AC -> compile -> strategy.setup
optimizer = strategy.build_optimizer()
"""

from __future__ import annotations

import importlib

from torch import nn

from distlm.config import Config, Derived
from distlm.parallel.base import Strategy, unwrap
from distlm.parallel.env import DistEnv, destroy_distributed, init_distributed
from distlm.parallel.transforms import apply_activation_checkpointing, apply_compile

# strategy name -> (module, class); imported lazily so DeepSpeed loads only when asked for
_STRATEGIES = {
    "ddp": ("distlm.parallel.ddp", "DDPStrategy"),
    "fsdp2": ("distlm.parallel.fsdp2", "FSDP2Strategy"),
    "zero1": ("distlm.parallel.zero", "ZeroStrategy"),
    "zero2": ("distlm.parallel.zero", "ZeroStrategy"),
    "zero3": ("distlm.parallel.zero", "ZeroStrategy"),
}


def build_strategy(cfg: Config, derived: Derived, env: DistEnv) -> Strategy:
    module, cls = _STRATEGIES[cfg.parallel.strategy]
    return getattr(importlib.import_module(module), cls)(cfg, derived, env)


def parallelize(model: nn.Module, cfg: Config, strategy: Strategy) -> nn.Module:
    """Apply the transforms in their documented order and hand the model to the strategy."""
    if cfg.parallel.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.train.compile:
        apply_compile(model)
    return strategy.setup(model)


__all__ = [
    "DistEnv",
    "Strategy",
    "apply_activation_checkpointing",
    "apply_compile",
    "build_strategy",
    "destroy_distributed",
    "init_distributed",
    "parallelize",
    "unwrap",
]
