"""The one place optimizers are built: `train.optimizer` x `parallel.offload` x the strategy.

- `adamw`: `torch.optim.AdamW` (fused on CUDA), 8 bytes/param of fp32 moments.
- `adamw8bit`: torchao's `AdamW8bit` (torchao.optim): both moments as uint8 codes with one fp32
  scale per 256 values (tensors under 4,096 values, or not a multiple of 256, keep fp32 moments),
  ~2.03 bytes/param. Why torchao and not bitsandbytes (measured on this machine, 2026-11-27):
  bitsandbytes 0.50.2's `AdamW8bit` steps a plain tensor (DDP) fine, but under FSDP2 its kernel
  raises "got mixed torch.Tensor and DTensor" on the sharded parameters; torchao builds its
  states as DTensors of the local shards, so it works under `ddp` and `fsdp2`, and its DCP
  checkpoints resume bit-identically (tested). Its cost: each parameter shape's step is
  `torch.compile`d once (44-92 s cold on 2 CPU cores, seconds from the inductor cache; on CUDA a
  fused Triton kernel). DeepSpeed ZeRO steps its own optimizer: `adamw8bit` is refused there.
- ZeRO with `parallel.offload`: DeepSpeed's `DeepSpeedCPUAdam` (a C++ AdamW over the offloaded
  fp32 states; DeepSpeed requires it for ZeRO-Offload; JIT-built once, ~2-3 min cold).

Every optimizer gets the same decay / no-decay groups (`adamw_param_groups`). `set_lr` writes
the schedule's lr the way each optimizer wants it (torchao keeps lr as a tensor so its compiled
step does not recompile when lr changes).
"""

from __future__ import annotations

import torch
from torch import nn

from distlm.config import Config


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; not norms, biases or the embedding (nanoGPT / Llama practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: Config, device: torch.device, deepspeed_offload: bool = False
) -> torch.optim.Optimizer:
    """The optimizer `cfg.train.optimizer` names over `model`'s (possibly sharded) parameters.

    `deepspeed_offload`: DeepSpeed ZeRO will keep the optimizer states on the CPU, so the step
    must be DeepSpeed's CPU Adam. Params on the CPU (FSDP2 offload) get the unfused torch AdamW.
    """
    t = cfg.train
    groups = adamw_param_groups(model, t.weight_decay)
    hyper = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    if deepspeed_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **hyper)
    if t.optimizer == "adamw8bit":
        from torchao.optim import AdamW8bit

        return AdamW8bit(groups, **hyper)  # block size 256, as bitsandbytes
    on_cuda = device.type == "cuda" and cfg.parallel.offload == "none"
    return torch.optim.AdamW(groups, fused=on_cuda, **hyper)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr; in place where the optimizer keeps lr as a tensor (torchao)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        elif _wants_tensor_lr(optimizer):  # a checkpoint load replaced the tensor by a float
            group["lr"] = torch.tensor(lr)
        else:
            group["lr"] = lr


def _wants_tensor_lr(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer).__module__.startswith("torchao.")


def restore_cpu_adam_step(optimizer: torch.optim.Optimizer) -> None:
    """Make a loaded `DeepSpeedCPUAdam` continue bit-identically to an uninterrupted run.

    Its C++ side keeps beta^t for the bias correction: multiplied by beta once per step in a run,
    but recomputed as pow(beta, t) on the first step after a load, which rounds differently
    (DeepSpeed csrc/includes/cpu_adam.h, `IncrementStep`); the next losses then differ in the
    last bit. Replaying the t multiplications on empty tensors (no update) restores them.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # ZeRO wraps the client optimizer
    if type(inner).__name__ != "DeepSpeedCPUAdam" or not inner.state:
        return
    steps = max(int(s["step"]) for s in inner.state.values() if "step" in s)
    beta1, beta2 = inner.param_groups[0]["betas"]
    empty = torch.empty(0)
    for step in range(1, steps + 1):
        inner.ds_opt_adam.adam_update(
            inner.opt_id, step, 0.0, beta1, beta2, 0.0, 0.0, True, empty, empty, empty, empty
        )
