"""torch DDP: every rank holds the whole model and optimizer; gradients are all-reduced.

Choose it when the model, its grads and AdamW states (16 bytes/param in fp32) fit on one GPU.
At world size 1 the model is not wrapped (nothing to reduce).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distlm.parallel.base import Strategy, build_optimizer, params_with_grad
from distlm.parallel.dcp_state import async_save_dcp, load_dcp, save_dcp
from distlm.parallel.grad_comm import apply_ddp_grad_comm
from distlm.parallel.step_guard import clip_, step_if_finite


class DDPStrategy(Strategy):
    name = "ddp"

    def setup(self, model: nn.Module) -> nn.Module:
        self.inner = model
        if self.env.world_size > 1:
            model = DistributedDataParallel(
                model,
                device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None,
                bucket_cap_mb=self.cfg.parallel.ddp_bucket_cap_mb,
                gradient_as_bucket_view=True,
            )
            apply_ddp_grad_comm(model, self.cfg)  # parallel.grad_comm_dtype=bf16: compress hook
        self.model = model
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        self.optimizer = build_optimizer(self.inner, self.cfg, self.env.device)
        return self.optimizer

    def no_sync(self) -> contextlib.AbstractContextManager:
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def step(self) -> torch.Tensor:
        assert self.optimizer is not None
        params = list(params_with_grad(self.inner))
        norm = nn.utils.get_total_norm([p.grad for p in params])  # a device tensor: no sync
        clip_(params, self.cfg.train.grad_clip, norm)
        step_if_finite(self.optimizer, norm)
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, path: Path) -> None:
        save_dcp(self.inner, self.optimizer, path)

    def save_async(self, path: Path) -> Future:
        return async_save_dcp(self.inner, self.optimizer, path)

    def load(self, path: Path) -> None:
        load_dcp(self.inner, self.optimizer, path)
