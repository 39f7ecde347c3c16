"""What `train()` returns: the run's per-step record, for tests and callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> mean train loss
    val_losses: dict[int, float] = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)  # non-finite: no update applied
    rollbacks: list[tuple[int, int]] = field(default_factory=list)  # (spike step, back to step)
    preempted: str | None = None  # the signal that stopped the run after its checkpoint
    sample: str | None = None
