"""Numerical faults inside the step: non-finite losses / gradients and loss spikes.

Non-finite. A NaN or inf loss makes the gradient non-finite, so one test covers both: every
strategy's `step()` returns the global pre-clip grad norm and, when it is not finite, zeroes the
grads without an optimizer update (the step counter still advances: the batch is consumed and
skipped). `NonFiniteGuard` counts the skips; `train.max_nonfinite_steps` in a row stop the run
with a `TrainingError` naming the step and the last good checkpoint.

Spikes. `SpikeDetector` keeps an exponential moving average of the global mean loss; a loss above
`train.spike_factor` x that average is a spike (logged; a spike does not enter the average). With
`train.spike_rollback` the trainer reloads the model, optimizer and RNG states of the latest
checkpoint (step c) but keeps the data loader where it is: the global batches of steps c+1 .. s
(the spike step s included) are never trained on again, and step c+1 takes the batch that would
have been step s+1's. The step counter (and so the lr schedule) goes back to c; the run still
ends after `train.steps` updates, having consumed s - c more batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

SPIKE_EMA_BETA = 0.9  # ~10-step memory: slow enough to ignore noise, fast enough to track decay
SPIKE_WARMUP_STEPS = 5  # no verdict until the average has seen this many steps
MAX_ROLLBACKS_PER_CHECKPOINT = 3  # a spike that survives this many skips is not the data's fault


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); the message says what to do."""


class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) steps and stops the run after `max_in_row`.

    The strategies skip a non-finite update on the device (parallel/step_guard.py); the guard
    only counts and reports, so it reads the norms on the host in batches: `add()` keeps each
    step's norm tensor, `flush()` (at log and checkpoint steps) reads all of them in one
    transfer, reports each skipped step and raises at the limit. A run that hits the limit
    stops at the next flush, before any later checkpoint is written.
    """

    def __init__(self, max_in_row: int):
        self.max_in_row, self.in_row = max_in_row, 0
        self.pending: list[tuple[int, torch.Tensor | float]] = []

    def add(self, step: int, grad_norm: torch.Tensor | float) -> None:
        self.pending.append((step, grad_norm))

    def flush(
        self,
        last_checkpoint: Callable[[], Path | None],
        on_skip: Callable[[int, float, int], None],
    ) -> None:
        """Read the pending norms (one host transfer); call `on_skip(step, norm, in_row)` for
        each skipped step in order; raise TrainingError at the limit."""
        if not self.pending:
            return
        first = self.pending[0][1]
        device = first.device if isinstance(first, torch.Tensor) else None
        norms = torch.stack(
            [torch.as_tensor(n, dtype=torch.float32, device=device) for _, n in self.pending]
        ).tolist()
        pending, self.pending = self.pending, []
        for (step, _), norm in zip(pending, norms, strict=True):
            if not math.isfinite(norm):
                on_skip(step, norm, self.in_row + 1)  # reported before a raise at the limit
            self.skipped(step, norm, last_checkpoint)

    def skipped(
        self, step: int, grad_norm: float, last_checkpoint: Callable[[], Path | None]
    ) -> bool:
        """True if this step was skipped; raises TrainingError (naming `last_checkpoint()`) at
        the limit."""
        if math.isfinite(grad_norm):
            self.in_row = 0
            return False
        self.in_row += 1
        if self.max_in_row and self.in_row >= self.max_in_row:
            raise TrainingError(
                f"{self.in_row} non-finite steps in a row ending at step {step} "
                f"(train.max_nonfinite_steps={self.max_in_row}); last good checkpoint: "
                f"{last_checkpoint() or 'none'}. Lower train.lr or check the data, then resume."
            )
        return True


class SpikeDetector:
    """loss > factor x EMA(loss) is a spike; factor 0 turns the detector off."""

    def __init__(
        self, factor: float, beta: float = SPIKE_EMA_BETA, warmup_steps: int = SPIKE_WARMUP_STEPS
    ):
        self.factor, self.beta, self.warmup_steps = factor, beta, warmup_steps
        self.ema, self.seen = 0.0, 0

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def is_spike(self, loss: float) -> bool:
        """Feed one global mean loss; True if it spikes (then it is kept out of the average)."""
        if not math.isfinite(loss):  # the non-finite guard owns these
            return False
        if self.seen >= self.warmup_steps and loss > self.factor * self.ema:
            return True
        self.ema = loss if self.seen == 0 else self.beta * self.ema + (1 - self.beta) * loss
        self.seen += 1
        return False

    def threshold(self) -> float:
        return self.factor * self.ema
