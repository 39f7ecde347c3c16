"""DeepSpeed ZeRO stages 1, 2 and 3 through the real `deepspeed.initialize` engine.

- zero1: AdamW states sharded (each rank keeps 12/W bytes/param of fp32 master + moments);
- zero2: + gradients sharded (reduce-scatter instead of all-reduce);
- zero3: + parameters sharded, gathered block by block in forward and backward.
Choose ZeRO when DeepSpeed's ecosystem (offload, its checkpoint tools) matters; for plain
sharding FSDP2 does the same as zero3 torch-natively and its checkpoints reshard on load.

The optimizer is a client `torch.optim.AdamW`, not DeepSpeed's FusedAdam, which would JIT-build a
C++ op (~43 s on CPU) on first use; with `parallel.offload` (ZeRO-Offload) it is DeepSpeed's
`DeepSpeedCPUAdam`, which DeepSpeed requires there (its `cpu_adam` op builds once, 2-3 min).
DeepSpeed owns gradient accumulation (its micro-step counter decides when to reduce and step);
the trainer owns the lr schedule (`set_lr`).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch
from torch import nn

from distlm.parallel.base import Strategy, build_optimizer, clean_fqn, train_dtype
from distlm.parallel.optimizer import restore_cpu_adam_step

TAG = "zero"  # DeepSpeed writes its files under <path>/<TAG>/


def deepspeed_config(cfg, derived, bf16: bool) -> dict:
    """The DeepSpeed JSON config for cfg.parallel.strategy = zero1 | zero2 | zero3."""
    p, stage = cfg.parallel, int(cfg.parallel.strategy[-1])
    zero = {
        "stage": stage,
        "overlap_comm": p.zero_overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": p.zero_bucket_size,
        "allgather_bucket_size": p.zero_bucket_size,
    }
    if stage == 3:
        zero["stage3_prefetch_bucket_size"] = p.zero_prefetch_bucket_size
    if p.offload != "none":  # ZeRO-Offload: fp32 master + Adam states and their step on the CPU
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": _pin_memory()}
    if p.offload == "all":  # ZeRO-Infinity's param offload (stage 3 only; config validation)
        zero["offload_param"] = {"device": "cpu", "pin_memory": _pin_memory()}
    ds = {
        "train_micro_batch_size_per_gpu": derived.micro_batch_size,
        "gradient_accumulation_steps": derived.grad_accum_steps,
        "train_batch_size": derived.global_batch_size,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": zero,
        "communication_data_type": p.grad_comm_dtype,  # stated: DeepSpeed's default follows bf16
        "zero_allow_untested_optimizer": True,  # the client torch AdamW
        "steps_per_print": 2**31 - 1,  # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if bf16:  # bf16 params/grads, fp32 master weights; skip steps with inf/nan grads
        ds["bf16"] = {"enabled": True, "check_grad_overflow": True}
    return ds


def _pin_memory() -> bool:
    """Pinned host buffers speed up copies to a GPU; without CUDA they cannot be allocated."""
    return torch.cuda.is_available()


class ZeroStrategy(Strategy):
    name = "zero"

    def setup(self, model: nn.Module) -> nn.Module:
        os.environ.setdefault("DS_ACCELERATOR", self.env.device.type)  # before DeepSpeed looks
        import deepspeed

        bf16 = train_dtype(self.cfg, self.env.device) == torch.bfloat16
        offload = self.cfg.parallel.offload != "none"  # ZeRO-Offload needs DeepSpeed's CPU Adam
        client_opt = build_optimizer(model, self.cfg, self.env.device, deepspeed_offload=offload)
        # the process group already exists (init_distributed): DeepSpeed wraps it
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=client_opt,
            config=deepspeed_config(self.cfg, self.derived, bf16),
            dist_init_required=False,
        )
        self.model = self.engine
        self._micro = 0
        return self.engine

    def build_optimizer(self) -> torch.optim.Optimizer:
        assert self.optimizer is not None, "setup() builds DeepSpeed's optimizer with its engine"
        return self.optimizer

    def backward(self, loss: torch.Tensor) -> None:
        # the trainer already divided the loss by the accumulation steps (base.py's contract)
        self.engine.backward(loss, scale_wrt_gas=False)
        self._micro += 1
        if self._micro < self.derived.grad_accum_steps:
            self.engine.step()  # not a boundary: only advances DeepSpeed's micro-step counter

    def no_sync(self) -> contextlib.AbstractContextManager:
        # DeepSpeed decides itself when to reduce (its engine.no_sync() refuses ZeRO-2/3)
        return contextlib.nullcontext()

    def step(self) -> torch.Tensor:
        """DeepSpeed's engine step; the norm is returned as a tensor without a read of ours.

        DeepSpeed itself reads the norm / overflow flag on the host inside `engine.step()`
        (`is_invalid_grad_norm` under bf16 with `check_grad_overflow`, `.item()` of its overflow
        all-reduce under fp16 and ZeRO-3): that is its non-finite guard and stays one sync per
        step; distlm adds none (torch DDP / FSDP2 add none at all, parallel/step_guard.py).
        """
        if self._micro != self.derived.grad_accum_steps:
            raise RuntimeError(
                f"ZeRO step after {self._micro} backward calls; DeepSpeed was configured for "
                f"gradient_accumulation_steps={self.derived.grad_accum_steps}"
            )
        assert self.engine.is_gradient_accumulation_boundary()
        self.engine.step()  # reduce, clip to gradient_clipping, AdamW; skips non-finite grads
        self._micro = 0
        norm = self.engine.get_global_grad_norm()  # a float or a device tensor
        norm = torch.as_tensor(math.nan if norm is None else norm, dtype=torch.float32)
        if not self.engine.was_step_applied():  # skipped as non-finite: never report it finite
            return torch.where(torch.isfinite(norm), math.inf, norm)
        return norm

    def save(self, path: Path) -> None:
        # save_latest: DeepSpeed's `latest` file (naming the tag) in `path`, where its own tools
        # look (`python state/zero_to_fp32.py state/ out/`); the checkpoint manager keeps its
        # own `latest` one level up
        self.engine.save_checkpoint(str(path), tag=TAG, save_latest=True)

    def load(self, path: Path) -> None:
        """Load `path`: a ZeRO checkpoint of this world size directly; one of another world size
        or a DCP (ddp / fsdp2) checkpoint through DeepSpeed's universal format (converted once,
        next to `path`, see distlm/checkpoint/convert_zero.py)."""
        from distlm.checkpoint import CheckpointError
        from distlm.checkpoint import convert_zero as convert

        if convert.is_dcp(path):
            names = {clean_fqn(n): n for n, _ in self.engine.module.named_parameters()}
            groups = len(self.optimizer.param_groups)
            load_path = self._load_universal(convert.dcp_to_universal(path, names, groups))
        elif (saved := convert.saved_world_size(path)) != self.env.world_size:
            convert.log_rank0(
                f"{path / TAG} was saved by {saved} rank(s), this run has "
                f"{self.env.world_size}: resuming through DeepSpeed's universal checkpoint"
            )
            load_path = self._load_universal(convert.zero_to_universal(path))
        else:
            load_path, _ = self.engine.load_checkpoint(
                str(path), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        if load_path is None:
            raise CheckpointError(f"{path}/{TAG}: DeepSpeed found no checkpoint to load")
        restore_cpu_adam_step(self.engine.optimizer)  # parallel.offload: exact resume
        self._micro = 0

    def _load_universal(self, universal: Path) -> str | None:
        """`engine.load_checkpoint` of a universal checkpoint: weights, Adam moments and step are
        re-partitioned for this world size."""
        # `load_universal` is read only inside load_checkpoint (DeepSpeed 0.19), so it is switched
        # on for this one load instead of in the config every run would carry
        ds_config = self.engine._config
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        ds_config.load_universal_checkpoint = True
        try:
            load_path, _ = self.engine.load_checkpoint(
                str(universal), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        finally:
            ds_config.load_universal_checkpoint = False
        # ZeRO-3's universal loader copies param group 0's hyperparameters into every group
        # (weight decay onto the norms); the run's own values, as its config sets them, go back
        for group, values in zip(self.optimizer.param_groups, hyper, strict=True):
            group.update(values)
        # ...and gives every group the same `step` tensor, which AdamW increments in place once
        # per group: one copy each, or Adam's bias correction runs ahead after the first step
        for state in self.optimizer.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        return load_path

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 master weights (a collective: every rank calls; every rank gets them)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.engine.module.named_parameters():
            full = safe_get_full_fp32_param(p)
            out[clean_fqn(name)] = (full if full is not None else p).detach().float().cpu().clone()
        return out
