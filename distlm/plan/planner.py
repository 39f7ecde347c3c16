"""What fits, how fast it goes and what would make it fit: the planner behind `distlm plan`.

For the configured (model, hardware, parallel, train) it evaluates every strategy with and without
activation checkpointing, picks for each the largest micro-batch that fits under a fraction of the
card's memory, and predicts tokens/s, tokens/day and days to a token budget.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from distlm.config import OFFLOAD_STRATEGIES, OPTIMIZERS, STRATEGIES, Config, ConfigError
from distlm.model.llama import count_params
from distlm.plan.comm_model import PCIE4_X16_GBPS, estimate_comm
from distlm.plan.flops import predict_speed
from distlm.plan.memory_model import Layout, MemoryBreakdown, estimate, host_bytes

# Leave 10 % of the card for the caching allocator's fragmentation and NCCL buffers we do not
# model (PyTorch CUDA caching allocator docs: reserved exceeds allocated by 5-15 % in practice).
DEFAULT_MEMORY_FRACTION = 0.9
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # compute-optimal budget, Hoffmann et al. 2022 (table 3)
# the chunk the planner's candidates use when model.loss_chunk_tokens is 0 (the config default)
PLAN_LOSS_CHUNK_TOKENS = 1024
PCIE_EFFICIENCY = 0.8  # achievable share of the PCIe link for large host<->GPU copies (assumed)


@dataclass(frozen=True)
class HostRates:
    """Seconds per parameter of one optimizer step on the host CPU (offload).

    Defaults measured on the 2-core dev VM (2026-11-27, bench/bench_memory.py, loaded by other
    work): a desktop CPU with more cores steps faster; `distlm plan --measure` measures this
    host's rates and plans with them.
    """

    cpu_adam_s_per_param: float = 2.0e-9  # DeepSpeedCPUAdam (AVX, OpenMP), ZeRO-Offload
    torch_adamw_s_per_param: float = 22.6e-9  # torch.optim.AdamW on CPU tensors, FSDP2 offload
    source: str = "2-core dev VM"


@dataclass(frozen=True)
class Choice:
    """One configuration the planner weighs: a strategy and the memory features it uses."""

    strategy: str
    activation_checkpointing: bool
    optimizer: str = "adamw"  # train.optimizer
    offload: str = "none"  # parallel.offload
    loss_chunk_tokens: int = 0  # model.loss_chunk_tokens

    def overrides(self, micro: int) -> str:
        """The exact command-line overrides that select this choice."""
        return (
            f"parallel.strategy={self.strategy} parallel.offload={self.offload} "
            f"train.optimizer={self.optimizer} model.loss_chunk_tokens={self.loss_chunk_tokens} "
            f"parallel.activation_checkpointing={str(self.activation_checkpointing).lower()} "
            f"train.micro_batch_size={micro}"
        )


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
    optimizer: str = "adamw"
    offload: str = "none"
    loss_chunk_tokens: int = 0
    host_fits: bool = True  # the offloaded states fit the host RAM budget
    host_step_s: float = 0.0  # host-side optimizer step + PCIe copies per optimizer step

    @property
    def choice(self) -> Choice:
        return Choice(
            self.strategy,
            self.activation_checkpointing,
            self.optimizer,
            self.offload,
            self.loss_chunk_tokens,
        )

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
    host_budget_bytes: float = 0.0  # host RAM one rank's offloaded states may use
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


def host_ram_bytes(cfg: Config) -> float:
    """Host RAM per node: hardware.host_memory_gb, else this machine's."""
    if cfg.hardware.host_memory_gb:
        return cfg.hardware.host_memory_gb * 1e9
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_budget(cfg: Config, fraction: float) -> float:
    """Bytes one rank may use: a fraction of the card, or of host RAM split over the ranks."""
    if cfg.hardware.memory_gb:
        return cfg.hardware.memory_gb * 1e9 * fraction
    return host_ram_bytes(cfg) * fraction / world_size_of(cfg)


def host_budget(cfg: Config, fraction: float) -> float:
    """Host RAM one rank's offloaded states may take: the node's RAM over its ranks."""
    return host_ram_bytes(cfg) * fraction / max(1, cfg.hardware.gpus_per_node)


def configured_choice(cfg: Config) -> Choice:
    p = cfg.parallel
    return Choice(
        p.strategy,
        p.activation_checkpointing,
        cfg.train.optimizer,
        p.offload,
        cfg.model.loss_chunk_tokens,
    )


def layout_for(
    cfg: Config, strategy: str, ac: bool, micro: int, choice: Choice | None = None
) -> Layout:
    """The memory model's input; the memory features come from `choice` (default: configured)."""
    c = choice or configured_choice(cfg)
    return Layout(
        strategy,
        world_size_of(cfg),
        micro,
        cfg.train.seq_len,
        is_bf16(cfg),
        ac,
        "cuda" if is_gpu(cfg) else "cpu",
        optimizer=c.optimizer,
        offload=c.offload,
        loss_chunk_tokens=c.loss_chunk_tokens,
    )


def local_batch(cfg: Config) -> int:
    return max(1, cfg.train.global_batch_tokens // cfg.train.seq_len // world_size_of(cfg))


def auto_micro_batch(
    cfg: Config, strategy: str, ac: bool, budget: float, choice: Choice | None = None
) -> int:
    """Largest divisor of the local batch whose predicted peak fits `budget`; 0 if none does."""
    local = local_batch(cfg)
    for micro in sorted((d for d in range(1, local + 1) if local % d == 0), reverse=True):
        if estimate(cfg.model, layout_for(cfg, strategy, ac, micro, choice)).peak <= budget:
            return micro
    return 0


def host_step_seconds(cfg: Config, c: Choice, rates: HostRates) -> float:
    """Offload: the host's optimizer step over this rank's shard plus the PCIe copies of
    gradients to the host and updated parameters back, per optimizer step (not overlapped)."""
    if c.offload == "none":
        return 0.0
    n = count_params(cfg.model) / world_size_of(cfg)
    # FSDP2 offload steps torch's AdamW on the CPU; ZeRO-Offload DeepSpeed's vectorised CPU Adam
    rate = rates.torch_adamw_s_per_param if c.strategy == "fsdp2" else rates.cpu_adam_s_per_param
    wire = 2 if is_bf16(cfg) else 4
    link = PCIE4_X16_GBPS * 1e9 * PCIE_EFFICIENCY
    return n * rate + 2 * n * wire / link


def speed(
    cfg: Config, strategy: str, ac: bool, micro: int, extra_s: float = 0.0
) -> tuple[float, float]:
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
        grad_elem_bytes=2 if cfg.parallel.grad_comm_dtype == "bf16" else 4,
    )
    s = predict_speed(cfg, w, ac, comm.exposed_s + extra_s)
    return s.tokens_per_s, s.assumed_mfu


def make_row(
    cfg: Config,
    c: Choice,
    budget: float,
    micro: int | None,
    host_budget_bytes: float = math.inf,
    rates: HostRates | None = None,
) -> Row:
    """One candidate; `micro=None` picks the largest micro-batch that fits."""
    s, ac = c.strategy, c.activation_checkpointing
    m = auto_micro_batch(cfg, s, ac, budget, c) if micro is None else micro
    mem = estimate(cfg.model, layout_for(cfg, s, ac, max(m, 1), c))
    host_ok = mem.host <= host_budget_bytes
    fits = m > 0 and mem.peak <= budget and host_ok
    host_s = host_step_seconds(cfg, c, rates or HostRates())
    tps, mfu = speed(cfg, s, ac, max(m, 1), host_s)
    return Row(
        s,
        ac,
        m,
        mem,
        fits,
        tps if fits else 0.0,
        mfu if fits else 0.0,
        optimizer=c.optimizer,
        offload=c.offload,
        loss_chunk_tokens=c.loss_chunk_tokens,
        host_fits=host_ok,
        host_step_s=host_s,
    )


def candidates(cfg: Config) -> list[Choice]:
    """Every strategy x offload x optimizer the strategies accept, with and without activation
    checkpointing, all with the chunked loss (never slower: bench/RESULTS.md)."""
    chunk = cfg.model.loss_chunk_tokens or PLAN_LOSS_CHUNK_TOKENS
    one_rank = world_size_of(cfg) == 1
    out = []
    for s in STRATEGIES:
        for offload in ("none", "optimizer", "all"):
            if offload != "none" and s not in OFFLOAD_STRATEGIES[offload]:
                continue
            if s == "fsdp2" and offload == "optimizer":
                continue  # FSDP2 has one policy: the same as `all`
            if one_rank and s != "ddp" and offload == "none":
                continue  # one rank: sharding alone changes nothing
            if one_rank and s in ("zero1", "zero3") and offload == "optimizer":
                continue  # one rank: zero1/zero3 offload the optimizer as zero2 does
            for opt in OPTIMIZERS:
                if s not in OPTIMIZERS[opt] or (opt != "adamw" and offload != "none"):
                    continue
                out += [Choice(s, ac, opt, offload, chunk) for ac in (False, True)]
    return out


def plan(
    cfg: Config,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
    rates: HostRates | None = None,
) -> Plan:
    """The configured run (first row) and every candidate at its largest fitting micro-batch.

    `rates`: host-side optimizer step rates (`--measure` measures this host's)."""
    n = count_params(cfg.model)
    budget = memory_budget(cfg, memory_fraction)
    p = Plan(n, world_size_of(cfg), budget, tokens_per_param * n)
    p.host_budget_bytes = host_budget(cfg, memory_fraction)
    micro = cfg.train.micro_batch_size or local_batch(cfg)
    chosen = make_row(cfg, configured_choice(cfg), budget, micro, p.host_budget_bytes, rates)
    chosen.configured = True
    p.rows.append(chosen)
    for c in candidates(cfg):
        p.rows.append(make_row(cfg, c, budget, None, p.host_budget_bytes, rates))
    p.advice = advise(cfg, p)
    return p


def advise(cfg: Config, p: Plan) -> list[str]:
    """Say what does not fit, the fastest candidate that fits, and when host RAM is the limit."""
    row = p.configured()
    gb = 1e9
    fitting = [r for r in p.rows[1:] if r.fits]
    best = max(fitting, key=lambda r: (r.tokens_per_s, r.micro_batch_size), default=None)
    if row.fits:
        out = [
            f"configured run fits: {row.memory.peak / gb:.1f} GB of {p.budget_bytes / gb:.1f} GB"
        ]
        if best and best.tokens_per_s > row.tokens_per_s * 1.05:
            out.append(f"faster: {describe(best)} ({best.tokens_per_s:,.0f} tokens/s predicted)")
        return out
    if not row.host_fits:
        out = [
            f"configured run does NOT fit host RAM: its offloaded states take "
            f"{row.memory.host / gb:.1f} GB per rank, the budget is "
            f"{p.host_budget_bytes / gb:.1f} GB (hardware.host_memory_gb, 90 % of the node's RAM "
            f"over its GPUs)"
        ]
    else:
        over = (row.memory.peak - p.budget_bytes) / gb
        out = [
            f"configured run does NOT fit: {row.memory.peak / gb:.1f} GB predicted, "
            f"{over:.1f} GB over the {p.budget_bytes / gb:.1f} GB budget"
        ]
    if best:
        out.append(f"would fit with: {describe(best)}")
        if best.tokens_per_s:
            days = p.token_budget / best.tokens_per_s / 86400
            out.append(
                f"  predicted {best.tokens_per_s:,.0f} tokens/s, {days:,.1f} days to "
                f"{p.token_budget / p.params:g} tokens/param"
            )
        return out
    ram_bound = [r for r in p.rows[1:] if r.memory.peak <= p.budget_bytes and not r.host_fits]
    if ram_bound:
        r = min(ram_bound, key=lambda r: r.memory.host)
        out.append(
            f"host RAM is the limit: {describe(r)} fits the card but needs "
            f"{r.memory.host / gb:.1f} GB of host RAM per rank ({p.host_budget_bytes / gb:.1f} GB "
            f"available); with more RAM set hardware.host_memory_gb"
        )
    out.append(needed_world_size(cfg, p))
    return out


def describe(r: Row) -> str:
    return r.choice.overrides(r.micro_batch_size)


def needed_world_size(cfg: Config, p: Plan) -> str:
    """Nothing fits here: how many ranks of this card would, with full sharding + checkpointing."""
    chunk = cfg.model.loss_chunk_tokens or PLAN_LOSS_CHUNK_TOKENS
    for w in (2, 4, 8, 16, 32, 64, 128, 256, 512):
        lay = Layout(
            "fsdp2",
            w,
            1,
            cfg.train.seq_len,
            is_bf16(cfg),
            True,
            "cuda" if is_gpu(cfg) else "cpu",
            loss_chunk_tokens=chunk,
        )
        if estimate(cfg.model, lay).peak <= p.budget_bytes:
            return (
                f"nothing fits on {p.world_size} rank(s); fsdp2 + activation checkpointing at "
                f"micro-batch 1 fits from {w} ranks of this card"
            )
    return "nothing fits even at 512 ranks: choose a smaller model or a shorter train.seq_len"


def check_host_ram(cfg: Config, world_size: int, local_ranks: int) -> None:
    """parallel.offload: refuse before step 0 when the offloaded states of this node's ranks do
    not fit 90 % of this machine's RAM (the planner's rule), naming what would."""
    if cfg.parallel.offload == "none":
        return
    lay = dataclasses.replace(
        layout_for(cfg, cfg.parallel.strategy, cfg.parallel.activation_checkpointing, 1),
        world_size=world_size,
    )
    need = host_bytes(cfg.model, lay) * local_ranks
    ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if need > DEFAULT_MEMORY_FRACTION * ram:
        raise ConfigError(
            f"parallel.offload={cfg.parallel.offload} with parallel.strategy="
            f"{cfg.parallel.strategy} needs {need / 1e9:.1f} GB of host RAM on this node "
            f"({local_ranks} rank(s)) for the offloaded states of model {cfg.model.name}; this "
            f"machine has {ram / 1e9:.1f} GB ({DEFAULT_MEMORY_FRACTION:.0%} usable). Use more "
            f"GPUs with parallel.offload=none, train.optimizer=adamw8bit, or a smaller model: "
            f"`python -m distlm plan` lists what fits"
        )
