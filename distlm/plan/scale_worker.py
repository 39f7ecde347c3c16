"""One world size of `distlm scale`: `torchrun --nproc_per_node=N -m distlm.plan.scale_worker`.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m distlm.plan.scale_worker \
        OUT.json STEPS WARMUP model=tiny ...

Weak scaling: every rank keeps the same local batch (global batch = N x the 1-rank batch), so
perfect scaling is N times the tokens/s. Per measured step:
- data: the time to get the step's batches (the real loader when `data.path=` is given on the
  command line, else random tokens, whose cost is ~0);
- the step itself (forward + backward of every micro-batch, gradient communication, optimizer);
- its micro-batches replayed under `no_sync()` (no gradient communication): compute alone;
the exposed communication wait is step - compute - optimizer, each figure the slowest rank's
(a straggler's extra compute is what the others wait for: compute, not communication). Before
the steps, an all-reduce sweep (message sizes up to the gradient, in parallel.grad_comm_dtype)
measures this group's latency and bus bandwidth; after them, one profiled step counts the bytes
handed to collectives (`distlm.plan.wire_bytes`). Rank 0 writes the JSON.
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
from distlm.plan.wire_bytes import WireBytes

SWEEP_MIN_ELEMENTS = 1 << 12


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


def allreduce_sweep(max_numel: int, dtype: torch.dtype, reps: int = 3) -> list[list[float]]:
    """[[message bytes, fastest of `reps` all-reduce seconds], ...] for sizes x4 up to max_numel.

    The fastest repetition is the link's cost; slower ones are other processes' interference.
    """
    sizes, n = [], SWEEP_MIN_ELEMENTS
    while n < max_numel:
        sizes.append(n)
        n *= 4
    sizes.append(max_numel)
    points = []
    for numel in sizes:
        buf = torch.zeros(numel, dtype=dtype)
        dist.all_reduce(buf)  # warm-up (connection and buffer set-up)
        secs = [_timed(lambda b=buf: dist.all_reduce(b)) for _ in range(reps)]
        # every rank must agree on the figure: take the slowest rank's best
        t = torch.tensor([min(secs)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        points.append([numel * buf.element_size(), float(t)])
    return points


def _batch_source(cfg, derived, env, use_loader: bool):
    """A function returning one step's micro-batches: the real loader, or random tokens."""
    if use_loader:
        from distlm.data import build_train_loader, loader_args

        loader = build_train_loader(cfg.data, **loader_args(cfg, derived, env.rank, env.device))
        return lambda: list(loader.next_batch()), "loader"
    gen = torch.Generator().manual_seed(env.rank)
    shape = (derived.micro_batch_size, cfg.train.seq_len)

    def random_batches():
        return [
            tuple(
                torch.randint(0, cfg.model.vocab_size, shape, generator=gen).to(env.device)
                for _ in range(2)
            )
            for _ in range(derived.grad_accum_steps)
        ]

    return random_batches, "random tokens"


def run(out: Path, steps: int, warmup: int, overrides: list[str]) -> dict:
    from distlm.parallel import build_strategy, init_distributed, parallelize
    from distlm.parallel.grad_comm import grad_comm_dtype

    env = init_distributed("cpu" if "train.device=cpu" in overrides else "auto")
    base = load_config(overrides)
    per_rank_tokens = base.train.global_batch_tokens
    cfg = load_config([*overrides, f"train.global_batch_tokens={per_rank_tokens * env.world_size}"])
    derived = resolve(cfg, env.world_size)
    params = count_params(cfg.model)
    sweep = allreduce_sweep(params, grad_comm_dtype(cfg)) if env.world_size > 1 else []
    torch.manual_seed(cfg.train.seed)
    strategy = build_strategy(cfg, derived, env)
    model = parallelize(build_model(cfg.model, env.device), cfg, strategy)
    strategy.build_optimizer()
    use_loader = any(o.startswith("data.path=") for o in overrides)
    next_batches, data_source = _batch_source(cfg, derived, env, use_loader)
    rows = []
    for step in range(steps):
        box = []
        data_s = _timed(lambda: box.append(next_batches()))  # noqa: B023
        batches = box[0]
        dist.barrier()
        fwd_bwd = _timed(lambda: _micro_steps(model, strategy, batches, sync_last=True))  # noqa: B023
        opt_s = _timed(strategy.step)
        compute = _timed(lambda: _micro_steps(model, strategy, batches, sync_last=False))  # noqa: B023
        strategy.optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            rows.append((fwd_bwd + opt_s, compute, opt_s, data_s))
    with WireBytes() as wire:
        _micro_steps(model, strategy, batches, sync_last=True)
        strategy.step()
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
    # the slowest rank sets the pace: its compute, not rank 0's, is what the others wait for
    slowest = torch.tensor(rows, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    med = [statistics.median(slowest[:, i].tolist()) for i in range(4)]
    step_s, compute_s, opt_s, data_s = med
    result = {
        "world_size": env.world_size,
        "strategy": cfg.parallel.strategy,
        "grad_comm_dtype": cfg.parallel.grad_comm_dtype,
        "tokens_per_step": cfg.train.global_batch_tokens,
        "grad_accum_steps": derived.grad_accum_steps,
        "step_time_s": step_s,
        "compute_s": compute_s,
        "optimizer_s": opt_s,
        "data_s": data_s,
        "data_source": data_source,
        "comm_wait_s": max(0.0, step_s - compute_s - opt_s),
        # the data wait is outside the step here; a training loop without prefetch adds it
        "tokens_per_s": cfg.train.global_batch_tokens / (step_s + data_s),
        "peak_mem_bytes": tracker.peak,
        "measured_steps": len(rows),
        "warmup_steps": warmup,
        "params": params,
        "wire_bytes": wire.bytes_by("name"),
        "allreduce_sweep": sweep,
    }
    if env.is_main:
        out.write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # one core per rank, as one GPU per rank: a fair weak-scaling base
    run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
