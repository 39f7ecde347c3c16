"""Test fault injection: deterministic faults and pauses, read from the environment per call.

Never set in production. The variables (DISTLM_INJECT_LOSS, DISTLM_DEBUG_PAUSE) are documented in
`distlm.train.fault`. This module sits at the bottom of the package (no distlm imports) so that
the checkpoint writer and the trainer can both pause at their points without importing each
other.
"""

from __future__ import annotations

import os
import sys
import time


def _parse(spec: str) -> dict[str, float]:
    pairs = (item.split(":" if ":" in item else "=") for item in spec.split(",") if item.strip())
    return {k.strip(): float(v) for k, v in pairs}


def injected_loss_factor(batch: int) -> float:
    """DISTLM_INJECT_LOSS's factor for `batch` (1.0 if unset); read per call: tests may set it."""
    spec = os.environ.get("DISTLM_INJECT_LOSS", "")
    return {int(k): v for k, v in _parse(spec).items()}.get(batch, 1.0) if spec else 1.0


def debug_pause(where: str, step: int) -> None:
    """Sleep per DISTLM_DEBUG_PAUSE at `where@step` (a deterministic window to kill a job in)."""
    spec = os.environ.get("DISTLM_DEBUG_PAUSE", "")
    if spec and (seconds := _parse(spec).get(f"{where}@{step}")):
        print(
            f"[rank {os.environ.get('RANK', '0')}] debug pause at {where}@{step} for {seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(seconds)
