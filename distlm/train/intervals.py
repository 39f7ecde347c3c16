"""The work the loop does on a schedule between steps, behind one call: `after_step()`.

Per step the loop hands over the step's loss and grad norm (device tensors: nothing is read on
the host). At log and checkpoint steps the non-finite guard reads the pending norms (and stops
the run after too many skips in a row); then, each when due: the log line, the evaluations, the
checkpoint, and the preemption check that every rank agrees on (checkpoint, then stop).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from distlm.checkpoint import CheckpointManager
from distlm.config import Config
from distlm.data.loader import TrainLoader
from distlm.eval.in_loop import Evaluator, due
from distlm.parallel import Strategy
from distlm.train.fault import EXIT_REQUEUE, PreemptionWatch, debug_pause
from distlm.train.metrics import MetricsLogger, peak_memory_gb
from distlm.train.numerics import NonFiniteGuard
from distlm.train.result import TrainResult


class IntervalWork:
    def __init__(
        self,
        cfg: Config,
        log: MetricsLogger,
        ckpt: CheckpointManager,
        strategy: Strategy,
        loader: TrainLoader,
        evaluator: Evaluator,
        preemption: PreemptionWatch,
        result: TrainResult,
        device: torch.device,
    ) -> None:
        self.cfg, self.log, self.ckpt, self.strategy = cfg, log, ckpt, strategy
        self.loader, self.evaluator, self.preemption = loader, evaluator, preemption
        self.result, self.device = result, device
        self.window = LogWindow()
        self.nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        self.saved_step = result.final_step  # the step the run resumed at is on disk

    def record(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Keep the step's loss and norm (device tensors) until the next log / checkpoint."""
        self.window.add(step, loss)
        self.nonfinite.add(step, grad_norm)

    def log_now(self, lr: float, grad_norm: torch.Tensor | float) -> None:
        self.window.log(self.log, self.result, self.cfg, lr, grad_norm, self.device)

    def after_step(
        self, step: int, lr: float, grad_norm: torch.Tensor, model: nn.Module, autocast: Callable
    ) -> bool:
        """Run what is due at `step`; True when the run must stop now (preempted, checkpointed)."""
        last = self.cfg.train.steps
        logging = due(step, self.cfg.logging.log_every_steps, last)
        checkpointing = due(step, self.cfg.checkpoint.every_steps, last)
        if logging or checkpointing:  # raises after train.max_nonfinite_steps in a row
            self.nonfinite.flush(self.ckpt.latest, self._report_skip)
        if logging:
            self.log_now(lr, grad_norm)
        if (val := self.evaluator.run(step, model, autocast)) is not None:  # when due
            self.result.val_losses[step] = val
        if checkpointing:
            self._save(step)
        debug_pause("step", step)
        if step < last and self.preemption.agreed():  # every rank stops after this step
            self.nonfinite.flush(self.ckpt.latest, self._report_skip)
            if self.saved_step != step:
                self._save(step)
            self.result.preempted = name = self.preemption.signal_name
            self.log.info(
                f"{name}: stopped after step {step}; rerun the same command to resume "
                f"(exit {EXIT_REQUEUE})"
            )
            return True
        return False

    def _save(self, step: int) -> None:
        path = self.ckpt.save(self.strategy, step, {"loader": self.loader.state_dict()})
        self.log.info(f"checkpoint {path}")
        self.saved_step = step

    def _report_skip(self, step: int, grad_norm: float, in_row: int) -> None:
        self.result.skipped_steps.append(step)
        self.log.info(
            f"step {step}: non-finite grad norm {grad_norm}, update skipped ({in_row} in a row)"
        )


class LogWindow:
    """The steps since the last log line: their losses stay tensors until one all-reduce."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))

    def log(
        self,
        log: MetricsLogger,
        result: TrainResult,
        cfg: Config,
        lr: float,
        grad_norm: torch.Tensor | float,
        device: torch.device,
    ) -> None:
        elapsed, n = time.perf_counter() - self.start, len(self.pending)
        losses = flush_losses(self.pending, device)
        result.losses.update(losses)
        step = self.pending[-1][0]
        tokens_per_s = n * cfg.train.global_batch_tokens / elapsed
        log.log(
            step,
            {
                "loss": losses[step],
                "lr": lr,
                "grad_norm": float(grad_norm),  # the one host read of it, at log steps
                "tokens_per_s": tokens_per_s,
                "step_time_s": elapsed / n,
                "mfu": log.mfu(tokens_per_s),
                "peak_mem_gb": peak_memory_gb(device),
            },
        )
        self.pending.clear()
        self.start = time.perf_counter()


def flush_losses(pending: list, device: torch.device) -> dict[int, float]:
    """One all-reduce for every step since the last log: per-step global mean losses."""
    stacked = torch.stack([loss.float() for _, loss in pending]).to(device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(stacked)
        stacked /= torch.distributed.get_world_size()
    return {s: v for (s, _), v in zip(pending, stacked.tolist(), strict=True)}
