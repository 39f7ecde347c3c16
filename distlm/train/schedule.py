"""Learning-rate schedules: a pure function of the step, so resuming needs only the step."""

from __future__ import annotations

import math

from distlm.config import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warmup, then cosine / WSD / constant."""
    min_lr = t.lr * t.min_lr_ratio
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "wsd":  # warmup-stable-decay: flat, then linear to min_lr over the tail
        decay_steps = max(1, int(t.steps * t.wsd_decay_fraction))
        decay_start = t.steps - decay_steps
        if step < decay_start:
            return t.lr
        return t.lr - (t.lr - min_lr) * (step - decay_start + 1) / decay_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return min_lr + 0.5 * (t.lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
