"""Checkpoint directories: what is in one, how it is committed, how a run finds it again.

    run_dir/checkpoints/
        step-00000100/          one complete checkpoint
            state/              model + optimizer, written by the strategy (DCP or DeepSpeed)
            trainer_state.json  step, loader position, strategy, world size, model config
            rng-rank00000.pt    each rank's RNG states
            config.yaml         the resolved config of the run that wrote it
        latest                  text: the name of the newest complete checkpoint

Every rank writes into `step-N.tmp/`; after a barrier rank 0 fsyncs, renames it to `step-N/` and
only then moves `latest` (itself written under a temporary name and renamed). A crash at any point
leaves the previous checkpoint as `latest`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distlm.config import Config
from distlm.config_loader import to_yaml
from distlm.parallel.base import Strategy

STATE_DIR = "state"
# checkpoints of strategies in one family load into each other (DCP reshards on load)
_FORMAT = {"ddp": "dcp", "fsdp2": "dcp", "zero1": "zero1", "zero2": "zero2", "zero3": "zero3"}
TRAINER_STATE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match this run; the message names it."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    def __init__(self, cfg: Config, run_dir: Path, rank: int):
        self.cfg, self.rank = cfg, rank
        self.root = run_dir / "checkpoints"

    # ---- save -------------------------------------------------------------------------------
    def save(self, strategy: Strategy, step: int, trainer_state: dict[str, Any]) -> Path:
        name = f"step-{step:08d}"
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        strategy.save(tmp / STATE_DIR)
        torch.save(_rng_state(), tmp / f"rng-rank{self.rank:05d}.pt")
        if self.rank == 0:
            state = {
                **trainer_state,
                "step": step,
                "strategy": self.cfg.parallel.strategy,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                "model_config": dataclasses.asdict(self.cfg.model),
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            (tmp / "config.yaml").write_text(to_yaml(self.cfg))
        _barrier()
        if self.rank == 0:
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step replaces it
            os.replace(tmp, final)
            _atomic_write_text(self.root / "latest", name + "\n")
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        done = sorted(p for p in self.root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    # ---- resume -----------------------------------------------------------------------------
    def find_resume(self) -> Path | None:
        """The checkpoint to resume from per checkpoint.resume (auto | never | a path)."""
        mode = self.cfg.checkpoint.resume
        if mode == "never":
            return None
        if mode != "auto":
            path = Path(mode)
            if not (path / TRAINER_STATE).exists():
                raise CheckpointError(
                    f"checkpoint.resume={mode}: no {TRAINER_STATE} there; expected a "
                    f"checkpoint directory such as {self.root}/step-00000100"
                )
            return path
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / TRAINER_STATE).exists():
            raise CheckpointError(f"{pointer} points to {path}, which is not a complete checkpoint")
        return path

    def load(self, strategy: Strategy, path: Path) -> dict[str, Any]:
        """Load model + optimizer into `strategy` and return the trainer state."""
        try:
            state = json.loads((path / TRAINER_STATE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path / TRAINER_STATE}: unreadable ({e})") from e
        self._check_compatible(path, state)
        strategy.load(path / STATE_DIR)
        rng = path / f"rng-rank{self.rank:05d}.pt"
        if rng.exists():  # absent when resuming at a larger world size
            _set_rng_state(torch.load(rng, weights_only=True))
        return state

    def _check_compatible(self, path: Path, state: dict[str, Any]) -> None:
        saved = state.get("model_config", {})
        ours = dataclasses.asdict(self.cfg.model)
        diff = [f"model.{k}: checkpoint {saved[k]!r} vs config {ours[k]!r}"
                for k in ours if k != "name" and k in saved and saved[k] != ours[k]]
        if diff:
            raise CheckpointError(f"{path} was written by a different model: " + "; ".join(diff))
        if _FORMAT.get(state.get("strategy")) != _FORMAT[self.cfg.parallel.strategy]:
            raise CheckpointError(
                f"{path} was written by parallel.strategy={state.get('strategy')}; this run uses "
                f"{self.cfg.parallel.strategy}. Resume with the same strategy, or export weights "
                f"with `python -m distlm consolidate {path} model.safetensors`"
            )


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
