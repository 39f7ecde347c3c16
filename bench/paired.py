"""Paired A/B measurement for a shared, noisy machine: the one way every bench reports a ratio.

A single "A then B" pair minutes apart swings 0.5-1.3x when another job shares the cores. Here A
and B run alternately (A B B A A B ...: the order flips each round so neither always runs second,
warm), each round gives one ratio B/A, and the report is the min, median and max of those ratios
with n. The median is the figure to quote; min/max say how noisy the machine was.

    from paired import paired, timed   # a bench/ script: its folder is on sys.path
    result = paired("bare loop", run_bare, "trainer", run_trainer, rounds=5)
    print(result.line())  # "trainer / bare loop: median 0.981 (min 0.952, max 1.004, n=5)"

Each `run_*` callable returns a figure where higher is better (tokens/s), or a `Timing` (seconds,
lower is better: the ratio is then inverted so >1 always means B is faster).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timing:
    """Seconds taken (lower is better); `paired` inverts the ratio for these."""

    seconds: float


@dataclass
class PairedResult:
    name_a: str
    name_b: str
    a: list[float] = field(default_factory=list)  # per-round figures of A
    b: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # per-round B/A (>1: B better)

    @property
    def n(self) -> int:
        return len(self.ratios)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def min(self) -> float:
        return min(self.ratios)

    @property
    def max(self) -> float:
        return max(self.ratios)

    def line(self, unit: str = "") -> str:
        ma, mb = statistics.median(self.a), statistics.median(self.b)
        suffix = f" {unit}" if unit else ""
        return (
            f"{self.name_b} / {self.name_a}: median {self.median:.3f} "
            f"(min {self.min:.3f}, max {self.max:.3f}, n={self.n}); "
            f"medians {self.name_a} {ma:,.4g}{suffix}, {self.name_b} {mb:,.4g}{suffix}"
        )


def _figure(value: float | Timing) -> tuple[float, bool]:
    """(value, higher_is_better)."""
    if isinstance(value, Timing):
        return value.seconds, False
    return float(value), True


def paired(
    name_a: str,
    run_a: Callable[[], float | Timing],
    name_b: str,
    run_b: Callable[[], float | Timing],
    rounds: int = 5,
    warmup: int = 1,
    verbose: bool = True,
) -> PairedResult:
    """Run A and B alternately `rounds` times (after `warmup` unrecorded rounds of each)."""
    for _ in range(warmup):
        run_a()
        run_b()
    result = PairedResult(name_a, name_b)
    for i in range(rounds):
        order = ((run_a, result.a), (run_b, result.b))
        if i % 2:  # flip the order every round: neither side always runs second
            order = order[::-1]
        higher = True
        for fn, sink in order:
            value, higher = _figure(fn())
            sink.append(value)
        a, b = result.a[-1], result.b[-1]
        result.ratios.append(b / a if higher else a / b)
        if verbose:
            print(
                f"  round {i + 1}/{rounds}: {name_a} {a:,.4g}  {name_b} {b:,.4g}  "
                f"ratio {result.ratios[-1]:.3f}",
                flush=True,
            )
    return result


def timed(fn: Callable[[], object]) -> Timing:
    """Wall time of one call, as a `Timing`."""
    start = time.perf_counter()
    fn()
    return Timing(time.perf_counter() - start)


def cpu_timed(fn: Callable[[], object]) -> Timing:
    """CPU time of this process for one call (for work whose wall time a loaded machine skews)."""
    start = time.process_time()
    fn()
    return Timing(time.process_time() - start)


def cpu_with_children_timed(fn: Callable[[], object]) -> Timing:
    """CPU time of this process and of the child processes it reaped during the call (a worker
    pool's processes are reaped when the pool closes): the work a multi-process job cost."""
    start = _cpu_all()
    fn()
    return Timing(_cpu_all() - start)


def _cpu_all() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def from_pairs(
    name_a: str, a: list[float], name_b: str, b: list[float], timings: bool
) -> PairedResult:
    """A PairedResult from figures already taken alternately (e.g. the CPU seconds recorded beside
    the wall times of one `paired` run); `timings`: lower is better, so ratios are a / b."""
    ratios = [x / y if timings else y / x for x, y in zip(a, b, strict=True)]
    return PairedResult(name_a, name_b, list(a), list(b), ratios)
