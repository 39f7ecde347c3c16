"""torch FSDP2 (`fully_shard`): parameters, gradients and AdamW states sharded over all ranks.

Choose it when the model's 16 bytes/param of fp32 weights + grads + AdamW states do not fit on
one GPU, or to free memory for bigger micro-batches; it is torch-native (no extra dependency) and
its checkpoints reshard to any world size. Each transformer block is one FSDP unit (one
all-gather / reduce-scatter per block), then the root takes the embedding, final norm and head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from distlm.parallel.base import Strategy, build_optimizer, params_with_grad, train_dtype
from distlm.parallel.dcp_state import async_save_dcp, load_dcp, save_dcp
from distlm.parallel.grad_comm import fsdp_mp_policy
from distlm.parallel.step_guard import clip_, step_if_finite


class FSDP2Strategy(Strategy):
    name = "fsdp2"

    def setup(self, model: nn.Module) -> nn.Module:
        mesh = init_device_mesh(self.env.device.type, (self.env.world_size,))
        # compute and all-gathers in train.dtype, gradients reduced in parallel.grad_comm_dtype,
        # fp32 master weights
        mp = fsdp_mp_policy(self.cfg, train_dtype(self.cfg, self.env.device))
        kwargs = {"mesh": mesh, "mp_policy": mp} if mp else {"mesh": mesh}
        if self.cfg.parallel.offload != "none":
            # FSDP2 has one policy: sharded params, grads and the AdamW step live on the CPU
            # (`optimizer` and `all` alike); pinning needs CUDA (it fails on a CPU-only host)
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        reshard = self.cfg.parallel.fsdp_reshard_after_forward
        for block in model.layers.values():
            fully_shard(block, reshard_after_forward=reshard, **kwargs)
        # the root's params (embedding/head, final norm) are needed right after forward by
        # backward anyway: keeping them gathered saves one all-gather (torchtitan does the same)
        fully_shard(model, reshard_after_forward=False, **kwargs)
        apply_fsdp_prefetch(model, self.cfg.parallel.fsdp_prefetch_layers)
        self.model = model
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        assert self.model is not None
        self.optimizer = build_optimizer(self.model, self.cfg, self.env.device)
        return self.optimizer

    @contextlib.contextmanager
    def _no_sync(self) -> Iterator[None]:
        assert isinstance(self.model, FSDPModule)
        # grads accumulate unsharded and unreduced; the last micro-step reduce-scatters the sum
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self._no_sync()

    def step(self) -> torch.Tensor:
        assert self.optimizer is not None and self.model is not None
        params = list(params_with_grad(self.model))
        norm = global_grad_norm(params)  # a device tensor: no sync
        clip_(params, self.cfg.train.grad_clip, norm)
        step_if_finite(self.optimizer, norm)
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, path: Path) -> None:
        save_dcp(self.model, self.optimizer, path)

    def save_async(self, path: Path) -> Future:
        return async_save_dcp(self.model, self.optimizer, path)

    def load(self, path: Path) -> None:
        load_dcp(self.model, self.optimizer, path)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded fp32 weights (a collective: every rank calls; rank 0's result is complete)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)


def apply_fsdp_prefetch(model: nn.Module, layers: int) -> None:
    """All-gather the next `layers` blocks ahead (forward) and the previous ones (backward).

    1 keeps FSDP2's implicit one-block prefetch. More hides the all-gather latency of small blocks
    on slow links at the cost of `layers` gathered blocks held at once.
    """
    if layers <= 1:
        return
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        block.set_modules_to_forward_prefetch(blocks[i + 1 : i + 1 + layers])
        block.set_modules_to_backward_prefetch(blocks[max(0, i - layers) : i][::-1])


def global_grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """L2 norm over all gradients of all ranks.

    Sharded grads are DTensors: their norm is a partial (per-shard) DTensor and `full_tensor()`
    all-reduces the squares, so every rank gets the norm of the whole unsharded gradient.
    """
    if not params:
        return torch.zeros(())
    norm = nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm  # 0-dim, on the device
