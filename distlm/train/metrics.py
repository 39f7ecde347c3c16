"""What a run reports: console lines, tensorboard scalars and metrics.jsonl (rank 0 only).

One row per step, from the run that produced the final model: a resumed run (and a spike
rollback) calls `rewind(step)`, which drops the rows of steps after the checkpoint it loaded
(their updates were lost or thrown away; the steps are trained again) by rewriting
metrics.jsonl under a temporary name and renaming it, and reopens tensorboard with `purge_step`
so that tensorboard discards the earlier events from that step on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from distlm.config import Config
from distlm.data import atomic_files
from distlm.plan.flops import flops_per_token


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:  # CPU: the process's peak resident set (Linux reports KiB)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    except ImportError:  # pragma: no cover - non-POSIX
        return 0.0


class MetricsLogger:
    """Writes metrics on rank 0; every other rank gets a logger that does nothing."""

    def __init__(self, cfg: Config, run_dir: Path, enabled: bool, world_size: int):
        self.enabled = enabled
        self.cfg, self.world_size = cfg, world_size
        self.flops_per_token = flops_per_token(cfg)
        self.run_dir = run_dir
        self.writer = None
        self.jsonl = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
            self._open_tensorboard()
        self._t0 = time.perf_counter()

    def _open_tensorboard(self, purge_step: int | None = None) -> None:
        if self.cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            logdir = self.run_dir / "tensorboard"
            if purge_step is not None:
                _wait_for_a_later_second(logdir)
            self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def rewind(self, step: int) -> None:
        """Forget every metric of steps > `step` (a run resuming from a checkpoint of `step`, or
        starting at 0): metrics.jsonl is rewritten atomically, tensorboard purges them."""
        if not self.enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        self.jsonl.close()
        kept = [line for line in path.read_text().splitlines(True) if _step(line) <= step]
        atomic_files.write_bytes(path, "".join(kept).encode())
        self.jsonl = open(path, "a", buffering=1)  # noqa: SIM115
        if self.writer:
            self.writer.close()
            self._open_tensorboard(purge_step=step + 1)

    def mfu(self, tokens_per_s: float) -> float:
        peak = self.cfg.hardware.peak_bf16_tflops * 1e12 * self.world_size
        return tokens_per_s * self.flops_per_token / peak if peak else 0.0

    def log(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: round(v, 6) for k, v in scalars.items()}}
        if prefix != "train":
            record = {"step": step, **{f"{prefix}_{k}": v for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
            self.writer.flush()  # on disk at each log line, as metrics.jsonl: a crash loses none
        print(
            f"{prefix} step {step:>6} | " + " | ".join(_fmt(k, v) for k, v in scalars.items()),
            flush=True,
        )

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.jsonl:
            self.jsonl.close()


def _step(line: str) -> int:
    """The step of a metrics.jsonl row; a torn last line (a crash mid-write) counts as the last
    step of all, so a rewind drops it."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def _fmt(key: str, value: float) -> str:
    if key == "lr":
        return f"lr {value:.2e}"
    if key in ("tokens_per_s",):
        return f"{value:,.0f} tok/s"
    if key == "mfu":
        return f"mfu {100 * value:.1f}%"
    if key.endswith("_gb"):
        return f"{key[:-3].replace('_', ' ')} {value:.2f} GB"
    if key.endswith("_s"):
        return f"{key} {value:.3f}"
    return f"{key} {value:.4f}"


def _wait_for_a_later_second(logdir: Path) -> None:
    """Make the next event file sort after every existing one (sleeps < 1 s, only on rewind).

    TensorBoard reads a run's event files in name order and a name starts with its creation
    second, then host and pid: a file made in the same second as the killed run's, by a process
    with a smaller pid, would be read first, and its purge (steps after the checkpoint) would
    then not apply to the killed run's events."""
    seconds = [
        int(part[3])
        for p in logdir.glob("events.out.tfevents.*")
        if len(part := p.name.split(".")) > 3 and part[3].isdigit()
    ]
    if seconds and (wait := max(seconds) + 1 - time.time()) > 0:
        time.sleep(wait)
