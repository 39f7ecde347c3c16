"""Parallelism: each strategy is one module applying itself to an unchanged model.

strategy = build_strategy(cfg, derived, env)
model = parallelize(model, cfg, strategy)      # FP8 -> AC -> compile -> strategy.setup
optimizer = strategy.build_optimizer()
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from distlm.config import Config, Derived
from distlm.parallel.base import Strategy, unwrap
from distlm.parallel.env import DistEnv, destroy_distributed, init_distributed
from distlm.parallel.float8 import apply_float8, plan_float8
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


def parallelize(
    model: nn.Module, cfg: Config, strategy: Strategy, log: Callable[[str], None] | None = None
) -> nn.Module:
    """Apply the transforms in their documented order and hand the model to the strategy:
    FP8 Linears -> activation checkpointing -> compile -> strategy. `log` gets the FP8 decision."""
    micro_batch_tokens = strategy.derived.micro_batch_size * cfg.train.seq_len
    fp8 = plan_float8(cfg, strategy.env.device, micro_batch_tokens)
    apply_float8(model, fp8, cfg.parallel.strategy)
    if log is not None and cfg.train.fp8.lower() != "false":
        log(fp8.line())
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
    "apply_float8",
    "build_strategy",
    "destroy_distributed",
    "init_distributed",
    "parallelize",
    "unwrap",
]
