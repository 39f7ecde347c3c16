"""Clip and step without reading the gradient norm on the host: no device sync per step.

A training step used to call `float(norm)` to decide whether to apply the update: on a GPU that
blocks the CPU until every kernel of the step has run, so the next step's kernels cannot be
queued behind it. Here the norm stays a device tensor:
- clipping multiplies the grads by min(1, max_norm / norm) on the device (torch's
  `clip_grads_with_norm_`; a non-finite norm makes the grads non-finite, and they are dropped);
- the skip of a non-finite step happens on the device where the optimizer can do it: torch's
  fused Adam / AdamW take `found_inf` (the flag `torch.amp.GradScaler` uses) and then leave the
  parameters, both moments and the step count untouched, exactly as if `step()` were not called;
- any other optimizer (torch's for-loop / foreach AdamW, torchao's 8-bit AdamW, DeepSpeed's CPU
  Adam) is stepped after one host read of the finite flag: one sync per step, as before.
The caller reads the returned norms on the host only when it logs (`NonFiniteGuard.flush`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True if `optimizer.step()` honours `found_inf` (torch's fused Adam / AdamW)."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        g.get("fused") for g in optimizer.param_groups
    )


def clip_(params: list[nn.Parameter], max_norm: float, norm: torch.Tensor) -> None:
    """Scale grads by min(1, max_norm / norm) on the device; max_norm <= 0 or inf: no clipping."""
    if params and 0 < max_norm < math.inf:
        nn.utils.clip_grads_with_norm_(params, max_norm, norm)


def step_if_finite(optimizer: torch.optim.Optimizer, norm: torch.Tensor) -> None:
    """`optimizer.step()` unless `norm` is inf / NaN; the caller zeroes the grads either way."""
    if skips_on_device(optimizer):
        # the fused kernels read found_inf on the device: 1.0 = skip the whole update
        optimizer.found_inf = (~torch.isfinite(norm)).float()
        optimizer.grad_scale = None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale
    elif bool(torch.isfinite(norm)):  # the one host read of an optimizer that cannot skip
        optimizer.step()
