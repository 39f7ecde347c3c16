"""FP8 training: torchao's float8 `Linear`s, swapped in before compile and before the strategy.

`train.fp8=true` converts every eligible `nn.Linear` of the transformer blocks (qkv, out,
gate_up, down) to torchao's `Float8Linear`: the matmul inputs are cast to float8 (e4m3 forward,
e5m2 gradients) with dynamic scales (`train.fp8_recipe`: one scale per tensor, `tensorwise`,
or per row, `rowwise`), the weights stay in their dtype (fp32 master weights are unchanged,
so checkpoints and state-dict names are too). Left in high precision:
- layers whose in/out features are not multiples of 16 (the FP8 GEMM's alignment);
- the output head (and the tied embedding, which is not a Linear): the logits are where
  float8's 2-3 significant bits hurt the loss most (torchtitan skips it too).
Under FSDP2 with the tensorwise recipe the weights are all-gathered in float8 (half of bf16's
bytes). Where no FP8 hardware is (CPU, GPUs before sm_89) torchao emulates the casts in high
precision: the numbers of FP8, not its speed; tests use it.

`train.fp8=auto` turns FP8 on only where it pays, measured on an RTX 5090 (issue 11): at
micro-batch 4 x 512 tokens FP8 was 0.75x bf16 (the casts and scale reductions cost more than the
faster GEMMs save), at 12 x 2048 1.24x. So auto wants a CUDA GPU of compute capability >= 8.9
(Ada, Hopper, Blackwell: FP8 tensor cores), `train.compile=true` (eager casts are separate
kernels) and a micro-batch of at least `train.fp8_auto_min_tokens` tokens (16,384 = 8 x 2048 by
default, between the two measured points); the log says which condition decided.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from distlm.config import Config, ConfigError

FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and later have FP8 tensor cores
FP8_ALIGNMENT = 16  # float8 GEMMs (torch._scaled_mm) need both matmul dims % 16 == 0
NO_ROWWISE_CAPABILITY = (12, 0)  # sm_120 (RTX 50xx): cuBLAS has no rowwise-scaled FP8 GEMM


@dataclass
class Float8Plan:
    """Whether FP8 is used, why, and (once applied) which layers were converted."""

    enabled: bool
    reason: str
    recipe: str = "tensorwise"  # tensorwise | rowwise (train.fp8_recipe)
    emulate: bool = False
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.enabled:
            return f"fp8 off: {self.reason}"
        mode = ", emulated: no FP8 hardware" if self.emulate else ""
        kept = ", ".join(self.skipped) or "none"
        return (
            f"fp8 {self.recipe} on ({self.reason}{mode}): {len(self.converted)} Linear layers "
            f"converted, {len(self.skipped)} kept in high precision ({kept})"
        )


def plan_float8(
    cfg: Config,
    device: torch.device,
    micro_batch_tokens: int,
    capability: tuple[int, int] | None = None,
) -> Float8Plan:
    """Decide train.fp8 for this device (`capability` defaults to the current CUDA device's)."""
    t = cfg.train
    mode = t.fp8.lower()
    if mode == "false":
        return Float8Plan(False, "train.fp8=false")
    if device.type == "cuda" and capability is None:
        capability = torch.cuda.get_device_capability(device)
    fp8_hw = capability is not None and capability >= FP8_MIN_CAPABILITY
    if t.fp8_recipe == "rowwise" and capability == NO_ROWWISE_CAPABILITY:
        raise ConfigError(
            f"train.fp8_recipe=rowwise: this GPU (sm_{capability[0]}{capability[1]}) has no "
            f"cuBLAS rowwise-scaled FP8 GEMM; use train.fp8_recipe=tensorwise"
        )
    if cfg.parallel.strategy not in ("ddp", "fsdp2"):
        raise ConfigError(
            f"train.fp8={t.fp8}: FP8 training supports parallel.strategy=ddp or fsdp2, not "
            f"{cfg.parallel.strategy}; set train.fp8=false or change the strategy"
        )
    if mode == "true":
        return Float8Plan(True, "train.fp8=true", t.fp8_recipe, emulate=not fp8_hw)
    # auto: every condition must hold; the first one that fails is the reason given
    where = f"sm_{capability[0]}{capability[1]}" if capability else device.type
    if not fp8_hw:
        return Float8Plan(False, f"train.fp8=auto and {where} has no FP8 tensor cores (sm_89+)")
    if not t.compile:
        return Float8Plan(False, "train.fp8=auto needs train.compile=true (eager casts cost more)")
    if micro_batch_tokens < t.fp8_auto_min_tokens:
        return Float8Plan(
            False,
            f"train.fp8=auto: micro-batch of {micro_batch_tokens} tokens < "
            f"train.fp8_auto_min_tokens={t.fp8_auto_min_tokens} (RTX 5090: FP8 0.75x bf16 at "
            f"4 x 512, 1.24x at 12 x 2048)",
        )
    reason = f"train.fp8=auto on {where}, compiled, {micro_batch_tokens} tokens per micro-batch"
    return Float8Plan(True, reason, t.fp8_recipe)


def fp8_eligible(module: nn.Module, fqn: str) -> bool:
    """A Linear of a transformer block whose matmul dims suit FP8; never the output head."""
    return (
        isinstance(module, nn.Linear)
        and fqn.startswith("layers.")
        and module.in_features % FP8_ALIGNMENT == 0
        and module.out_features % FP8_ALIGNMENT == 0
    )


def apply_float8(model: nn.Module, plan: Float8Plan, strategy: str) -> Float8Plan:
    """Swap eligible Linears for torchao `Float8Linear` in place (if `plan.enabled`)."""
    if not plan.enabled:
        return plan
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    # FSDP2 all-gathers the weights already cast to float8 (tensorwise scales only)
    gather_fp8 = strategy == "fsdp2" and plan.recipe == "tensorwise"
    config = dataclasses.replace(
        Float8LinearConfig.from_recipe_name(plan.recipe),
        emulate=plan.emulate,
        enable_fsdp_float8_all_gather=gather_fp8,
    )
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    plan.converted = [n for n in linears if fp8_eligible(model.get_submodule(n), n)]
    plan.skipped = [n for n in linears if n not in plan.converted]
    convert_to_float8_training(model, module_filter_fn=fp8_eligible, config=config)
    return plan
