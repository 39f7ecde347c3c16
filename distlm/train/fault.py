"""Faults from outside the step: preemption signals, out-of-memory reports, test fault injection.

Preemption. SIGTERM (slurm preemption / time limit, `kill`, torchrun forwarding its own SIGTERM)
and SIGUSR1 (`#SBATCH --signal=B:USR1@120`, forwarded by `slurm/train.sbatch`) only set a flag.
At every step boundary all ranks all-reduce the flag (MAX, a CPU tensor: gloo, no GPU sync), so
a signal that reached any one rank stops all of them after the same step: each finishes the
current step, the checkpoint is saved and every rank exits with `EXIT_REQUEUE`. A second signal
changes nothing (slurm and torchrun may both deliver one); SIGKILL is what ends a stuck job.

Exit status: `python -m distlm train` returns `EXIT_REQUEUE` (3) itself. Under torchrun the
agent's own status is 1 whenever a worker exits non-zero (its report shows `exitcode: 3` per
rank), so the sbatch script decides to requeue from having forwarded the signal, not from the
status; the checkpoint is on disk before any rank exits.

Test fault injection (never set in production; read once from the environment):
    DISTLM_INJECT_LOSS="3:nan,7:100"   multiply the loss of global batches 3 and 7 of the data
                                       stream (1-based; = the step until a spike rollback skips
                                       batches) by the factor on every rank, before backward: a
                                       NaN batch, a loss spike
    DISTLM_DEBUG_PAUSE="checkpoint@4=30"  sleep 30 s inside the save of step 4, after the state
                                       is written and before the commit (rename + `latest`);
                                       "step@5=3" sleeps at the end of step 5 (a window to kill in);
                                       "commit@8=30" sleeps in the background commit of step 8's
                                       asynchronous save (checkpoint.async_save), files written
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch
import torch.distributed as dist

from distlm.config import Config
from distlm.fault_injection import debug_pause, injected_loss_factor

__all__ = ["EXIT_REQUEUE", "PreemptionWatch", "debug_pause", "injected_loss_factor"]

EXIT_REQUEUE = 3  # saved after a preemption signal: requeue the same command (resume=auto)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    """`with PreemptionWatch() as watch:` handles SIGTERM / SIGUSR1 inside the block (and restores
    the previous handlers after it); `watch.agreed()` says whether every rank must stop now."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():  # signal.signal's requirement
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            rank = os.environ.get("RANK", "0")
            print(
                f"[rank {rank}] {self.signal_name}: will checkpoint and stop after this step",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self) -> bool:
        """True on every rank if any rank got a signal (a collective: call it on all ranks)."""
        flag = torch.tensor([0 if self.signal_name is None else 1], dtype=torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "a preemption signal on another rank"
        return bool(flag.item())


# ---- out of memory --------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def oom_report(cfg: Config) -> str:
    """What to change after an OOM: the planner's fitting micro-batch for this config."""
    t, p = cfg.train, cfg.parallel
    where = f"{cfg.hardware.gpu_name} ({cfg.hardware.memory_gb or '?'} GB)"
    head = (
        f"out of memory on {where}: model {cfg.model.name}, parallel.strategy={p.strategy}, "
        f"train.micro_batch_size={t.micro_batch_size or 'whole local batch'}, "
        f"train.seq_len={t.seq_len}, activation_checkpointing={p.activation_checkpointing}. "
    )
    try:
        from distlm.plan.planner import DEFAULT_MEMORY_FRACTION, auto_micro_batch, memory_budget
    except ImportError:
        return (
            head + "Lower train.micro_batch_size (the planner, `python -m distlm plan`, is "
            "not available to suggest one)."
        )
    budget = memory_budget(cfg, DEFAULT_MEMORY_FRACTION)
    advice = []
    for ac in sorted({p.activation_checkpointing, True}):
        micro = auto_micro_batch(cfg, p.strategy, ac, budget)
        if micro:
            extra = " parallel.activation_checkpointing=true" if ac else ""
            advice.append(f"train.micro_batch_size={micro}{extra}")
    if not advice:
        return head + (
            f"The planner finds no micro-batch that fits with {p.strategy}: try "
            f"parallel.strategy=fsdp2 or zero3, or see `python -m distlm plan`."
        )
    return head + (
        "The planner's fitting micro-batch for this config and hardware: "
        + " or ".join(advice)
        + " (see `python -m distlm plan`)."
    )
