"""Dry-run a multi-GPU job on this CPU: every rank's model built and sharded on the meta device.

Like torchtitan's dry run, one process joins torch's "fake" process group (collectives return at
once, no data moves) as rank r of W, builds the real model on the meta device, applies the real
strategy through `distlm.parallel.parallelize`, creates the real AdamW and steps it once over
zero gradients laid out like the parameters (what the strategy's backward would produce), then
counts each rank's parameter / gradient / optimizer bytes from the local shards and compares them
with `memory_model.state_bytes`. No memory is allocated: it runs 8- or 16-rank 1B jobs in seconds.
DeepSpeed ZeRO cannot initialise on the fake backend, so zero1/2/3 are checked by the model only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from distlm.config import Config, resolve
from distlm.model.llama import build_model
from distlm.plan.memory_model import Layout, state_bytes
from distlm.plan.planner import is_bf16, world_size_of


@dataclass
class RankBytes:
    rank: int
    measured: tuple[int, int, int]  # params, grads, optimizer bytes from the local tensors
    predicted: tuple[int, int, int]  # memory_model.state_bytes

    @property
    def matches(self) -> bool:
        return self.measured == self.predicted


@dataclass
class DryRunResult:
    strategy: str
    world_size: int
    note: str = ""
    ranks: list[RankBytes] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return all(r.matches for r in self.ranks)


def local_bytes(t: torch.Tensor) -> int:
    """Bytes this rank holds for `t`: the local shard of a DTensor, else the whole tensor."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def count_state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, int, int]:
    params = sum(local_bytes(p) for p in model.parameters())
    grads = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(local_bytes(v) for s in opt.state.values() for k, v in s.items() if k != "step")
    return params, grads, states


def build_rank(cfg: Config, rank: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Rank `rank`'s model, sharded by the configured strategy, with a stepped AdamW (all meta)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from distlm.parallel import DistEnv, build_strategy, parallelize

    world = world_size_of(cfg)
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        # DDP's constructor reads parameter values (it cannot wrap meta tensors); it shards
        # nothing, so its ranks are built as the unwrapped replica it would hold
        env_world = 1 if cfg.parallel.strategy == "ddp" else world
        env = DistEnv(rank, rank % cfg.hardware.gpus_per_node, env_world, torch.device("cpu"))
        strategy = build_strategy(cfg, resolve(cfg, world), env)
        model = parallelize(build_model(cfg.model, "meta"), cfg, strategy)
        opt = strategy.build_optimizer()
        for p in model.parameters():  # grads laid out like the params, as backward leaves them
            p.grad = torch.zeros_like(p)
        opt.step()  # AdamW creates exp_avg / exp_avg_sq lazily, at the first step
        return model, opt
    finally:
        dist.destroy_process_group()


def dry_run_config(cfg: Config) -> Config:
    """The job as a CPU process can build it: meta tensors, no compile, no CUDA."""
    train = dataclasses.replace(
        cfg.train, compile=False, device="cpu", dtype="bf16" if is_bf16(cfg) else "fp32"
    )
    return dataclasses.replace(cfg, train=train)


def dry_run(cfg: Config, ranks: list[int] | None = None) -> DryRunResult:
    world = world_size_of(cfg)
    strategy = cfg.parallel.strategy
    result = DryRunResult(strategy, world)
    if strategy.startswith("zero"):
        result.note = (
            "DeepSpeed ZeRO cannot initialise on torch's fake process group: "
            f"{strategy} is checked by the memory model only"
        )
        return result
    run_cfg = dry_run_config(cfg)
    lay = Layout(strategy, world, 1, cfg.train.seq_len, False, False, "cpu")
    for r in ranks if ranks is not None else range(world):
        model, opt = build_rank(run_cfg, r)
        result.ranks.append(RankBytes(r, count_state(model, opt), state_bytes(cfg.model, lay, r)))
    if strategy == "ddp":
        result.note = (
            "ddp: every rank holds the whole model, grads and AdamW states (built "
            "unwrapped: DDP cannot wrap meta tensors)"
        )
    return result


def format_dry_run(res: DryRunResult) -> str:
    head = f"dry run: {res.strategy} over {res.world_size} ranks (fake process group, meta device)"
    if not res.ranks:
        return f"{head}\n{res.note}"
    lines = [head, "rank  params MB (real/model)  grads MB (real/model)  optim MB (real/model)  ok"]
    for r in res.ranks:
        cells = [
            f"{m / 1e6:>10.3f} / {p / 1e6:<10.3f}"
            for m, p in zip(r.measured, r.predicted, strict=True)
        ]
        lines.append(f"{r.rank:>4}  " + "  ".join(cells) + f"  {'yes' if r.matches else 'NO'}")
    verdict = (
        "per-rank bytes match the memory model exactly"
        if res.matches
        else "MISMATCH between the sharded tensors and the memory model"
    )
    return "\n".join(lines + ([res.note] if res.note else []) + [verdict])
