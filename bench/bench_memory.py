"""Memory features: peak step memory with and without the chunked loss, and the tokens/s cost of
each feature (chunked loss, 8-bit AdamW, FSDP2 and ZeRO-2 CPU offload) as paired ratios.

Peak memory is the planner's exact live-tensor byte counter (distlm/plan/measure.py) over one
steady-state step (forward, backward, AdamW), both variants in one run. Speed: one process, A and
B alternated by bench/paired.py, each round a few optimizer steps through the strategy's own
setup / backward / step (the trainer's path without its data loader).

    .venv/bin/python bench/bench_memory.py memory   # model=124m, vocab 32k, seq 1024, micro 4
    .venv/bin/python bench/bench_memory.py speed    # paired tokens/s ratios per feature
    .venv/bin/python bench/bench_memory.py loss     # head + loss alone (124m's shape), CPU time
    .venv/bin/python bench/bench_memory.py memory model.n_layers=2   # extra overrides
"""

from __future__ import annotations

import os
import sys
import time

import torch

from distlm.config import resolve
from distlm.config_loader import load_config
from distlm.plan.measure import WARMUP_STEPS, _peak_bytes, _setup, _step
from distlm.plan.memory_model import Layout, estimate

sys.path.insert(0, os.path.dirname(__file__))
from paired import cpu_timed, paired  # noqa: E402

MEMORY_ARGS = [
    "model=124m",
    "hardware=cpu",
    "model.vocab_size=32000",
    "train.seq_len=1024",
    "train.dtype=fp32",
]
MICRO = 4
CHUNK = 1024
# the speed comparisons: a small model whose head (vocab 32k) is a large share of the step
SPEED_ARGS = [
    "model=tiny",
    "hardware=cpu",
    "model.vocab_size=32000",
    "model.d_model=256",
    "model.n_layers=2",
    "model.max_seq_len=512",
    "train.seq_len=512",
    "train.global_batch_tokens=2048",
    "train.micro_batch_size=4",
    "train.dtype=fp32",
    "train.device=cpu",
]


def peak_step(args: list[str]) -> tuple[int, int]:
    """(measured, predicted) peak tensor bytes of one steady-state step at micro-batch MICRO."""
    cfg = load_config(args)
    model, opt, autocast = _setup(cfg, torch.device("cpu"))
    t = cfg.train.seq_len
    gen = torch.Generator().manual_seed(0)
    batch = tuple(torch.randint(0, cfg.model.vocab_size, (MICRO, t), generator=gen) for _ in "xy")
    for _ in range(WARMUP_STEPS - 1):  # one step allocates AdamW's states
        _step(model, opt, batch, autocast)
    measured = _peak_bytes(model, opt, batch, autocast, torch.device("cpu"))
    lay = Layout(
        "ddp", 1, MICRO, t, False, False, "cpu", loss_chunk_tokens=cfg.model.loss_chunk_tokens
    )
    return measured, estimate(cfg.model, lay).peak


def bench_memory(extra: list[str]) -> None:
    start = time.perf_counter()
    plain = peak_step([*MEMORY_ARGS, *extra, "model.loss_chunk_tokens=0"])
    chunked = peak_step([*MEMORY_ARGS, *extra, f"model.loss_chunk_tokens={CHUNK}"])
    gb = 1e9
    print(f"peak step memory, {' '.join(MEMORY_ARGS + extra)}, micro-batch {MICRO}, fp32, CPU")
    print(f"  plain loss:            measured {plain[0] / gb:.3f} GB (model {plain[1] / gb:.3f})")
    print(
        f"  chunked loss ({CHUNK} tok): measured {chunked[0] / gb:.3f} GB "
        f"(model {chunked[1] / gb:.3f})"
    )
    print(f"  chunked / plain: {chunked[0] / plain[0]:.3f}  ({time.perf_counter() - start:.0f} s)")


def strategy_runner(args: list[str], steps: int = 3):
    """A callable: `steps` optimizer steps through the configured strategy; returns tokens/s."""
    from distlm.model import build_model
    from distlm.parallel import build_strategy, init_distributed, parallelize

    cfg = load_config(args)
    env = init_distributed("cpu")
    derived = resolve(cfg, env.world_size)
    torch.manual_seed(0)
    strategy = build_strategy(cfg, derived, env)
    model = parallelize(build_model(cfg.model), cfg, strategy)
    strategy.build_optimizer()
    gen = torch.Generator().manual_seed(0)
    shape = (derived.micro_batch_size, cfg.train.seq_len)
    x, y = (torch.randint(0, cfg.model.vocab_size, shape, generator=gen) for _ in "xy")
    tokens = steps * derived.local_batch_size * cfg.train.seq_len

    def run() -> float:
        begin = time.perf_counter()
        for _ in range(steps):
            for _ in range(derived.grad_accum_steps):
                strategy.backward(model(x, y) / derived.grad_accum_steps)
            strategy.step()
        return tokens / (time.perf_counter() - begin)

    return run


def bench_speed(extra: list[str], rounds: int) -> None:
    base = [*SPEED_ARGS, *extra]
    pairs = [
        ("plain loss", [], "chunked loss", [f"model.loss_chunk_tokens={CHUNK}"]),
        ("adamw", [], "adamw8bit", ["train.optimizer=adamw8bit"]),
        (
            "fsdp2",
            ["parallel.strategy=fsdp2"],
            "fsdp2 offload",
            ["parallel.strategy=fsdp2", "parallel.offload=all"],
        ),
        (
            "zero2",
            ["parallel.strategy=zero2"],
            "zero2 offload",
            ["parallel.strategy=zero2", "parallel.offload=optimizer"],
        ),
    ]
    lines = []
    for name_a, a, name_b, b in pairs:
        print(f"{name_b} vs {name_a}:", flush=True)
        result = paired(
            name_a, strategy_runner(base + a), name_b, strategy_runner(base + b), rounds=rounds
        )
        lines.append(result.line("tokens/s"))
    print(f"tokens/s, {' '.join(base)} (ratio > 1: B faster)")
    print("\n".join("  " + line for line in lines))


def bench_loss(rounds: int) -> None:
    """Forward + backward of the head and loss alone at 124m's shape (4 x 1024 tokens, d_model
    768, vocab 32k), plain vs chunked, in process CPU time (less skewed by a loaded machine)."""
    from distlm.model.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1024, 768, generator=gen, requires_grad=True)
    w = (torch.randn(32000, 768, generator=gen) * 0.02).requires_grad_()
    y = torch.randint(0, 32000, (4, 1024), generator=gen)

    def run(chunk: int):
        def once() -> None:
            linear_cross_entropy(x, w, y, chunk).backward()
            x.grad = w.grad = None

        return lambda: cpu_timed(once)

    result = paired("plain loss", run(0), f"chunked loss ({CHUNK})", run(CHUNK), rounds=rounds)
    print("head + loss fwd+bwd, 4 x 1024 tokens, d 768, vocab 32000, fp32 (ratio > 1: faster)")
    print("  " + result.line("s"))


def main(argv: list[str]) -> None:
    what = argv[0] if argv and argv[0] in ("memory", "speed", "loss") else "all"
    extra = [a for a in argv if "=" in a]
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    if what in ("memory", "all"):
        bench_memory(extra)
    if what in ("speed", "all"):
        bench_speed(extra, rounds)
    if what in ("loss", "all"):
        bench_loss(rounds)


if __name__ == "__main__":
    main(sys.argv[1:])
