"""One world size of `distlm scale`: `torchrun --nproc_per_node=N -m distlm.plan.scale_worker`.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m distlm.plan.scale_worker \
        OUT.json STEPS WARMUP model=tiny ...

Weak scaling: every rank keeps the same local batch (global batch = N x the 1-rank batch), so
perfect scaling is N times the tokens/s. Each measured step is timed whole, then its micro-batches
are replayed under `no_sync()` (no gradient communication) to time compute alone; the exposed
communication wait is the difference, less the optimizer step. Random tokens: the data pipeline is
not what is measured. Rank 0 writes the JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from distlm.config import resolve
from distlm.config_loader import load_config
from distlm.model.llama import build_model, count_params
from distlm.plan.measure import LiveTensorBytes


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _micro_steps(model, strategy, batches, sync_last: bool) -> None:
    for i, (x, y) in enumerate(batches):
        last = i == len(batches) - 1
        ctx = strategy.no_sync() if not (last and sync_last) else torch.enable_grad()
        with ctx:
            strategy.backward(model(x, y) / len(batches))


def allreduce_bus_gbps(numel: int, world: int, reps: int = 3) -> float:
    """Measured ring bus bandwidth of this process group for a gradient-sized fp32 all-reduce."""
    buf = torch.zeros(numel)
    dist.all_reduce(buf)  # warm-up (connection set-up)
    secs = min(_timed(lambda: dist.all_reduce(buf)) for _ in range(reps))
    return numel * 4 / secs * 2 * (world - 1) / world / 1e9  # nccl-tests busbw convention


def run(out: Path, steps: int, warmup: int, overrides: list[str]) -> dict:
    from distlm.parallel import build_strategy, init_distributed, parallelize

    env = init_distributed("cpu" if "train.device=cpu" in overrides else "auto")
    base = load_config(overrides)
    per_rank_tokens = base.train.global_batch_tokens
    cfg = load_config([*overrides, f"train.global_batch_tokens={per_rank_tokens * env.world_size}"])
    derived = resolve(cfg, env.world_size)
    torch.manual_seed(cfg.train.seed)
    strategy = build_strategy(cfg, derived, env)
    model = parallelize(build_model(cfg.model, env.device), cfg, strategy)
    strategy.build_optimizer()
    gen = torch.Generator().manual_seed(env.rank)
    shape = (derived.micro_batch_size, cfg.train.seq_len)
    batches = [
        tuple(
            torch.randint(0, cfg.model.vocab_size, shape, generator=gen).to(env.device)
            for _ in range(2)
        )
        for _ in range(derived.grad_accum_steps)
    ]
    rows = []
    for step in range(steps):
        dist.barrier()
        fwd_bwd = _timed(lambda: _micro_steps(model, strategy, batches, sync_last=True))
        opt_s = _timed(strategy.step)
        compute = _timed(lambda: _micro_steps(model, strategy, batches, sync_last=False))
        strategy.optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            rows.append((fwd_bwd + opt_s, compute, opt_s))
    tracker = LiveTensorBytes()
    for t in [
        *model.parameters(),
        *(v for s in strategy.optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
    ]:
        tracker.track(t)
    tracker.reset_peak()
    with tracker:
        _micro_steps(model, strategy, batches, sync_last=True)
        strategy.step()
    step_s = statistics.median(r[0] for r in rows)
    compute_s = statistics.median(r[1] for r in rows)
    opt_s = statistics.median(r[2] for r in rows)
    result = {
        "world_size": env.world_size,
        "strategy": cfg.parallel.strategy,
        "tokens_per_step": cfg.train.global_batch_tokens,
        "step_time_s": step_s,
        "compute_s": compute_s,
        "optimizer_s": opt_s,
        "comm_wait_s": max(0.0, step_s - compute_s - opt_s),
        "tokens_per_s": cfg.train.global_batch_tokens / step_s,
        "peak_mem_bytes": tracker.peak,
        "measured_steps": len(rows),
        "warmup_steps": warmup,
        "params": count_params(cfg.model),
        "bus_gbps": allreduce_bus_gbps(count_params(cfg.model), env.world_size)
        if env.world_size > 1
        else 0.0,
    }
    if env.is_main:
        out.write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # one core per rank, as one GPU per rank: a fair weak-scaling base
    run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
