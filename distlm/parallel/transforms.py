"""Model transforms applied before a strategy wraps the model (torchtitan's order).

Order, fixed in `parallelize()`: FP8 Linears (parallel/float8.py) -> activation checkpointing
-> torch.compile -> strategy. FP8 swaps modules first so checkpointing and compile see the
float8 Linears (compile fuses their casts), checkpointing wraps each block, compile then compiles
each (wrapped) block, and the strategy shards / wraps last so its hooks sit outside compiled
regions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def _blocks(model: nn.Module) -> nn.ModuleDict:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleDict):
        raise TypeError("expected a model with a `layers` ModuleDict of transformer blocks")
    return layers


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every block's activations in backward: memory ~ one block instead of all."""
    layers = _blocks(model)
    for key, block in layers.items():
        layers[key] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block separately: one graph reused n_layers times compiles fast."""
    layers = _blocks(model)
    for key, block in layers.items():
        layers[key] = torch.compile(block, fullgraph=True)
