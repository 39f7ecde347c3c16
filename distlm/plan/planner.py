"""What fits, how fast it goes and what would make it fit: the planner behind `distlm plan`.

For the configured (model, hardware, parallel, train) it evaluates every strategy with and without
activation checkpointing, picks for each the largest micro-batch that fits under a fraction of the
card's memory, and predicts tokens/s, tokens/day and days to a token budget.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from distlm.config import STRATEGIES, Config
from distlm.model.llama import count_params
from distlm.plan.comm_model import estimate_comm
from distlm.plan.flops import predict_speed
from distlm.plan.memory_model import Layout, MemoryBreakdown, estimate

# Leave 10 % of the card for the caching allocator's fragmentation and NCCL buffers we do not
# model (PyTorch CUDA caching allocator docs: reserved exceeds allocated by 5-15 % in practice).
DEFAULT_MEMORY_FRACTION = 0.9
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # compute-optimal budget, Hoffmann et al. 2022 (table 3)


@dataclass
class Row:
    strategy: str
    activation_checkpointing: bool
    micro_batch_size: int  # 0 = nothing fits, not even 1
    memory: MemoryBreakdown | None
    fits: bool
    tokens_per_s: float
    mfu: float
    configured: bool = False

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["memory"] = self.memory.as_dict() if self.memory else None
        return d


@dataclass
class Plan:
    params: int
    world_size: int
    budget_bytes: float
    token_budget: float
    rows: list[Row] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    def configured(self) -> Row:
        return next(r for r in self.rows if r.configured)


def world_size_of(cfg: Config) -> int:
    return max(1, cfg.hardware.gpus_per_node * cfg.hardware.num_nodes)


def is_gpu(cfg: Config) -> bool:
    return cfg.train.device != "cpu" and cfg.hardware.gpu_name.lower() != "cpu"


def is_bf16(cfg: Config) -> bool:
    return cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and is_gpu(cfg))


def memory_budget(cfg: Config, fraction: float) -> float:
    """Bytes one rank may use: a fraction of the card, or of host RAM split over the ranks."""
    if cfg.hardware.memory_gb:
        return cfg.hardware.memory_gb * 1e9 * fraction
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram * fraction / world_size_of(cfg)


def layout_for(cfg: Config, strategy: str, ac: bool, micro: int) -> Layout:
    return Layout(
        strategy,
        world_size_of(cfg),
        micro,
        cfg.train.seq_len,
        is_bf16(cfg),
        ac,
        "cuda" if is_gpu(cfg) else "cpu",
    )


def local_batch(cfg: Config) -> int:
    return max(1, cfg.train.global_batch_tokens // cfg.train.seq_len // world_size_of(cfg))


def auto_micro_batch(cfg: Config, strategy: str, ac: bool, budget: float) -> int:
    """Largest divisor of the local batch whose predicted peak fits `budget`; 0 if none does."""
    local = local_batch(cfg)
    for micro in sorted((d for d in range(1, local + 1) if local % d == 0), reverse=True):
        if estimate(cfg.model, layout_for(cfg, strategy, ac, micro)).peak <= budget:
            return micro
    return 0


def speed(cfg: Config, strategy: str, ac: bool, micro: int) -> tuple[float, float]:
    """(tokens/s over all ranks, MFU) with the exposed communication of this strategy."""
    w = world_size_of(cfg)
    base = predict_speed(cfg, w, ac)
    if not base.tokens_per_s:
        return 0.0, 0.0
    accum = max(1, local_batch(cfg) // max(micro, 1))
    comm = estimate_comm(
        cfg.hardware,
        strategy,
        count_params(cfg.model),
        w,
        accum,
        is_bf16(cfg),
        base.seconds_per_step,
    )
    s = predict_speed(cfg, w, ac, comm.exposed_s)
    return s.tokens_per_s, s.assumed_mfu


def make_row(cfg: Config, strategy: str, ac: bool, budget: float, micro: int | None) -> Row:
    """One candidate; `micro=None` picks the largest micro-batch that fits."""
    m = auto_micro_batch(cfg, strategy, ac, budget) if micro is None else micro
    mem = estimate(cfg.model, layout_for(cfg, strategy, ac, max(m, 1)))
    fits = m > 0 and mem.peak <= budget
    tps, mfu = speed(cfg, strategy, ac, max(m, 1))
    return Row(strategy, ac, m, mem, fits, tps if fits else 0.0, mfu if fits else 0.0)


def plan(
    cfg: Config,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
) -> Plan:
    n = count_params(cfg.model)
    w = world_size_of(cfg)
    budget = memory_budget(cfg, memory_fraction)
    p = Plan(n, w, budget, tokens_per_param * n)
    micro = cfg.train.micro_batch_size or local_batch(cfg)
    chosen = make_row(
        cfg, cfg.parallel.strategy, cfg.parallel.activation_checkpointing, budget, micro
    )
    chosen.configured = True
    p.rows.append(chosen)
    strategies = STRATEGIES if w > 1 else ("ddp",)  # one rank: nothing to shard
    for s in strategies:
        for ac in (False, True):
            p.rows.append(make_row(cfg, s, ac, budget, None))
    p.advice = advise(cfg, p)
    return p


def advise(cfg: Config, p: Plan) -> list[str]:
    """Say what does not fit and the cheapest change that would make it fit."""
    row = p.configured()
    gb = 1e9
    if row.fits:
        best = max((r for r in p.rows[1:] if r.fits), key=lambda r: r.tokens_per_s, default=None)
        out = [
            f"configured run fits: {row.memory.peak / gb:.1f} GB of {p.budget_bytes / gb:.1f} GB"
        ]
        if best and best.tokens_per_s > row.tokens_per_s * 1.05:
            out.append(f"faster: {describe(best)} ({best.tokens_per_s:,.0f} tokens/s predicted)")
        return out
    over = (row.memory.peak - p.budget_bytes) / gb
    out = [
        f"configured run does NOT fit: {row.memory.peak / gb:.1f} GB predicted, "
        f"{over:.1f} GB over the {p.budget_bytes / gb:.1f} GB budget"
    ]
    fitting = [r for r in p.rows[1:] if r.fits]
    if fitting:
        best = max(fitting, key=lambda r: r.tokens_per_s or r.micro_batch_size)
        out.append(f"would fit with: {describe(best)}")
    else:
        out.append(needed_world_size(cfg, p))
    return out


def describe(r: Row) -> str:
    return (
        f"parallel.strategy={r.strategy} parallel.activation_checkpointing="
        f"{str(r.activation_checkpointing).lower()} train.micro_batch_size={r.micro_batch_size}"
    )


def needed_world_size(cfg: Config, p: Plan) -> str:
    """Nothing fits here: how many ranks of this card would, with full sharding + checkpointing."""
    for w in (2, 4, 8, 16, 32, 64, 128, 256, 512):
        lay = Layout(
            "fsdp2", w, 1, cfg.train.seq_len, is_bf16(cfg), True, "cuda" if is_gpu(cfg) else "cpu"
        )
        if estimate(cfg.model, lay).peak <= p.budget_bytes:
            return (
                f"nothing fits on {p.world_size} rank(s); fsdp2 + activation checkpointing at "
                f"micro-batch 1 fits from {w} ranks of this card"
            )
    return "nothing fits even at 512 ranks: choose a smaller model or a shorter train.seq_len"
