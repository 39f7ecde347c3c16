"""Checkpoint directories: what is in one, how it is committed, how a run finds it again.

    run_dir/checkpoints/
        step-00000100/          one complete checkpoint
            state/              model + optimizer, written by the strategy (DCP or DeepSpeed)
            trainer_state.json  step, loader position, strategy, world size, model config
            rng-rank00000.pt    each rank's RNG states
            config.yaml         the resolved config of the run that wrote it
            files.json          size and checksum of every file above (checked on load)
        latest                  text: the name of the newest complete checkpoint

Every rank writes into `step-N.tmp/`; after a barrier every rank hashes its share of the files,
rank 0 writes `files.json`, fsyncs, renames it to `step-N/` and only then moves `latest` (itself
written under a temporary name and renamed). A crash at any point leaves the previous checkpoint
as `latest`; leftover `*.tmp` directories are never read and are deleted when the next run
starts. Loading checks every file's size and (`checkpoint.verify=true`, the default) checksum
against `files.json` before anything is read (see `integrity.py`), so a truncated or corrupted
file is named, not half-loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distlm.checkpoint.async_commit import background_commit
from distlm.checkpoint.integrity import (
    FILES,
    first_checksum_mismatch,
    first_size_mismatch,
    read_listing,
    record_files,
)
from distlm.config import Config
from distlm.config_loader import to_yaml
from distlm.data import atomic_files
from distlm.fault_injection import debug_pause
from distlm.parallel.base import Strategy


def _dcp_exception() -> type[BaseException]:
    """DCP's exception type, imported when an error is being handled (an `except` clause's
    types are evaluated only then): torch.distributed.checkpoint costs ~1.3 s to import."""
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


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


class CheckpointManager:
    def __init__(self, cfg: Config, run_dir: Path, rank: int):
        self.cfg, self.rank = cfg, rank
        self.root = run_dir / "checkpoints"
        self._committing: Future | None = None  # the asynchronous save being written
        if rank == 0 and self.root.is_dir():  # half-written leftovers of a killed run
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    # ---- save -------------------------------------------------------------------------------
    def save(self, strategy: Strategy, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write and commit checkpoint `step` (a collective). With checkpoint.async_save the
        model + optimizer are copied and written in the background, and the commit (files.json,
        fsync, rename, `latest`) follows there once every rank's write is done; the next save,
        a load and `wait()` wait for it."""
        self.wait()
        name = f"step-{step:08d}"
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        writing = None
        if self.cfg.checkpoint.async_save:
            writing = strategy.save_async(tmp / STATE_DIR)
        else:
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
        debug_pause("checkpoint", step)
        if writing is not None:
            self._committing = background_commit(self._commit, writing, tmp, final, step)
            return final
        _barrier()
        self._commit(tmp, final)
        _barrier()
        return final

    def _commit(self, tmp: Path, final: Path, group: Any = None) -> None:
        """files.json, fsync, rename, then `latest` (collective over `group`, all files written)."""
        record_files(tmp, group)  # every rank hashes its share; rank 0 writes files.json
        if self.rank == 0:
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step replaces it
            os.replace(tmp, final)
            atomic_files.write_bytes(self.root / "latest", (final.name + "\n").encode())
            self._prune()

    def wait(self) -> None:
        """Until the pending asynchronous checkpoint is committed; raises its error if it
        failed. Every rank calls it (the trainer does at the end of training)."""
        committing, self._committing = self._committing, None
        if committing is None:
            return
        try:
            committing.result()
        except (Exception, _dcp_exception()) as e:  # DCP's is a BaseException
            raise CheckpointError(
                f"asynchronous checkpoint failed ({_failure_text(e)}); `latest` still names the "
                f"previous complete checkpoint"
            ) from e

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        done = sorted(p for p in self.root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    # ---- resume -----------------------------------------------------------------------------
    def latest(self) -> Path | None:
        """The newest committed checkpoint of this run dir (what `latest` names), if any."""
        pointer = self.root / "latest"
        return self.root / pointer.read_text().strip() if pointer.exists() else None

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
        path = self.latest()
        if path is not None and not (path / TRAINER_STATE).exists():
            raise CheckpointError(
                f"{self.root / 'latest'} points to {path}, which is not a complete checkpoint; "
                f"set checkpoint.resume to another step directory or checkpoint.resume=never"
            )
        return path

    def load(self, strategy: Strategy, path: Path) -> dict[str, Any]:
        """Load model + optimizer into `strategy` and return the trainer state."""
        self.wait()  # a rollback must not read while a commit renames or prunes
        try:
            state = json.loads((path / TRAINER_STATE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path / TRAINER_STATE}: unreadable ({e})") from e
        self._check_compatible(path, state)
        self._verify_files(path)
        try:
            state_dir = path / STATE_DIR
            if _FORMAT[self.cfg.parallel.strategy] == "dcp" != _FORMAT[state["strategy"]]:
                from distlm.checkpoint.convert_zero import zero_to_dcp  # imports this module

                state_dir = zero_to_dcp(state_dir)  # a ZeRO checkpoint as DCP, made once
            strategy.load(state_dir)  # ZeRO strategies read DCP checkpoints themselves
        except CheckpointError:  # the strategy's own, already precise
            raise
        except (Exception, _dcp_exception()) as e:  # DCP's is a BaseException: name the dir
            raise CheckpointError(
                f"{path / STATE_DIR}: cannot load model/optimizer state "
                f"({_failure_text(e)}); {_alternatives(path)}"
            ) from e
        rng = path / f"rng-rank{self.rank:05d}.pt"
        if rng.exists():  # absent when resuming at a larger world size
            try:
                _set_rng_state(torch.load(rng, weights_only=True))
            except Exception as e:
                raise CheckpointError(f"{rng}: unreadable RNG state ({e})") from e
        return state

    def _verify_files(self, ckpt: Path) -> None:
        """Sizes, then (checkpoint.verify) checksums of every file against files.json, before
        anything is read; every rank raises the same error (the checksums are a collective)."""
        try:
            files = read_listing(ckpt)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{ckpt / FILES}: unreadable ({e}); {_alternatives(ckpt)}") from e
        if files is None:  # written before files.json existed
            return
        problem = first_size_mismatch(ckpt, files)
        if problem is None and self.cfg.checkpoint.verify:
            problem = first_checksum_mismatch(ckpt, files)
            if problem:
                problem += " (checkpoint.verify=false would load it anyway)"
        if problem:
            raise CheckpointError(f"{problem}; this checkpoint is damaged: {_alternatives(ckpt)}")

    def _check_compatible(self, path: Path, state: dict[str, Any]) -> None:
        saved = state.get("model_config", {})
        ours = dataclasses.asdict(self.cfg.model)
        diff = [
            f"model.{k}: checkpoint {saved[k]!r} vs config {ours[k]!r}"
            for k in ours
            if k not in ("name", "init_from") and k in saved and saved[k] != ours[k]  # not shapes
        ]
        if diff:
            raise CheckpointError(f"{path} was written by a different model: " + "; ".join(diff))
        saved, ours = _FORMAT.get(state.get("strategy")), _FORMAT[self.cfg.parallel.strategy]
        if saved != ours and (saved is None or "dcp" not in (saved, ours)):  # ZeRO<->DCP maps
            raise CheckpointError(
                f"{path} was written by parallel.strategy={state.get('strategy')}; this run uses "
                f"{self.cfg.parallel.strategy}. Resume with the same strategy, or export weights "
                f"with `python -m distlm consolidate {path} model.safetensors`"
            )


def _failure_text(e: BaseException) -> str:
    """The whole error, one `rank r: Type: message` per failed rank for DCP's wrapper (whose own
    text is every rank's traceback)."""
    failures = getattr(e, "failures", None)
    if isinstance(e, _dcp_exception()) and failures:
        return "; ".join(
            f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in failures.items()
        )
    return f"{type(e).__name__}: {e}"


def _alternatives(ckpt: Path) -> str:
    """What to resume from instead of a damaged `ckpt`: the newest complete one before it."""
    earlier = sorted(
        p
        for p in ckpt.parent.glob("step-*")
        if not p.name.endswith(".tmp") and p.name < ckpt.name and (p / TRAINER_STATE).exists()
    )
    if earlier:
        return (
            f"resume from the previous checkpoint (checkpoint.resume={earlier[-1]}) or start "
            f"over (checkpoint.resume=never)"
        )
    return f"no earlier checkpoint in {ckpt.parent}: start over (checkpoint.resume=never)"


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
