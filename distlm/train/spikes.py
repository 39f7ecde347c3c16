"""Loss spikes in the loop: `train.spike_factor` detects, `train.spike_rollback` goes back.

The detection itself (a moving average of the global mean loss) is `numerics.SpikeDetector`; this
module is what the loop does about a spike: log it, and with rollback reload the latest
checkpoint's model, optimizer and RNG but not the loader, so the batches since it are skipped
(the policy is documented in `numerics.py`).
"""

from __future__ import annotations

import json

import torch

from distlm.checkpoint import CheckpointManager
from distlm.checkpoint.manager import TRAINER_STATE
from distlm.config import Config
from distlm.parallel import Strategy
from distlm.parallel.env import all_reduce_mean
from distlm.train.intervals import IntervalWork
from distlm.train.metrics import MetricsLogger
from distlm.train.numerics import MAX_ROLLBACKS_PER_CHECKPOINT, SpikeDetector, TrainingError
from distlm.train.result import TrainResult


class SpikeGuard:
    def __init__(
        self,
        cfg: Config,
        log: MetricsLogger,
        ckpt: CheckpointManager,
        strategy: Strategy,
        work: IntervalWork,
        device: torch.device,
    ) -> None:
        self.detector = SpikeDetector(cfg.train.spike_factor)
        self.rollback = cfg.train.spike_rollback
        self.log, self.ckpt, self.strategy, self.work, self.device = (
            log,
            ckpt,
            strategy,
            work,
            device,
        )

    def check(
        self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor
    ) -> int | None:
        """The step to continue from after a rolled-back spike, else None (the common case).

        Off by default; when on, it costs one host read of the loss per step."""
        if not self.detector.enabled:
            return None
        if not self.detector.is_spike(all_reduce_mean(loss.item(), self.device)):
            return None
        self.log.info(
            f"step {step}: loss spike > {self.detector.threshold():.4f} (train.spike_factor "
            f"x moving average of the loss)"
        )
        if (
            not self.rollback
            or (back := roll_back(self.ckpt, self.strategy, step, self.work.result, self.log))
            is None
        ):
            return None
        self.work.log_now(lr, grad_norm)
        self.log.rewind(back)  # the steps after `back` are trained again: one row each
        return back


def roll_back(
    ckpt: CheckpointManager, strategy: Strategy, step: int, result: TrainResult, log: MetricsLogger
) -> int | None:
    """Reload the latest checkpoint's model, optimizer and RNG, but not the loader (so the
    batches consumed since it are skipped); return its step, or None if there is none."""
    if (latest := ckpt.latest()) is None:
        log.info("no checkpoint to roll back to yet: continuing")
        return None
    back = int(json.loads((latest / TRAINER_STATE).read_text())["step"])
    if sum(1 for _, b in result.rollbacks if b == back) >= MAX_ROLLBACKS_PER_CHECKPOINT:
        raise TrainingError(
            f"loss spikes after {MAX_ROLLBACKS_PER_CHECKPOINT} rollbacks to "
            f"{latest}: lower train.lr or check the data"
        )
    ckpt.load(strategy, latest)
    result.rollbacks.append((step, back))
    log.info(
        f"rolled back to {latest}: the batches of steps {back + 1}..{step} are skipped; "
        f"step {back + 1} continues with the next batch"
    )
    return back
