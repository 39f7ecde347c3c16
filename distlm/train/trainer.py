"""The training loop: setup -> build -> parallelize -> optimizer -> data -> resume -> loop.

Read it top to bottom. Everything strategy-specific hides behind `Strategy`; everything that
only rank 0 does hides behind `MetricsLogger`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distlm.checkpoint import CheckpointManager
from distlm.checkpoint.manager import TRAINER_STATE
from distlm.config import Config, resolve
from distlm.config_loader import save_config
from distlm.data import build_train_loader
from distlm.eval.in_loop import build_evaluator
from distlm.export.hf_import import init_from_hf
from distlm.model import build_model
from distlm.parallel import Strategy, build_strategy, init_distributed, parallelize
from distlm.parallel.base import train_dtype
from distlm.parallel.env import all_reduce_mean, launch_world_size
from distlm.plan.planner import check_host_ram  # parallel.offload: host RAM before step 0
from distlm.train.fault import EXIT_REQUEUE, PreemptionWatch, debug_pause, injected_loss_factor
from distlm.train.metrics import MetricsLogger, peak_memory_gb
from distlm.train.numerics import (
    MAX_ROLLBACKS_PER_CHECKPOINT,
    NonFiniteGuard,
    SpikeDetector,
    TrainingError,
)
from distlm.train.sample import sample_text
from distlm.train.schedule import lr_at


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


def train(cfg: Config) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------
    # config errors first, before the rendezvous: every rank refuses alone, with the same line
    derived = resolve(cfg, launch_world_size())
    check_host_ram(cfg, derived.world_size, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    env = init_distributed(cfg.train.device, cfg.parallel.timeout_minutes)
    run_dir = Path(cfg.logging.run_dir)
    log = MetricsLogger(cfg, run_dir, enabled=env.is_main, world_size=env.world_size)
    if env.is_main:
        save_config(cfg, run_dir / "config.yaml")
    log.info(f"world size {env.world_size} on {env.device} | {derived}")
    bf16 = train_dtype(cfg, env.device) == torch.bfloat16  # the strategies resolve it the same way

    # ---- data (validated before anything is built: fail before step 0) --------------------
    data_args = dict(
        seq_len=cfg.train.seq_len,
        global_batch_size=derived.global_batch_size,
        micro_batch_size=derived.micro_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        device=env.device,
        vocab_size=cfg.model.vocab_size,
    )
    loader = build_train_loader(cfg.data, **data_args)
    evaluator = build_evaluator(cfg, log, **data_args)  # val loss + bits per byte, eval.tasks

    # ---- model, parallelism, optimizer --------------------------------------------------------
    torch.manual_seed(cfg.train.seed)  # identical init on every rank
    model = build_model(cfg.model, env.device)
    if note := init_from_hf(model, cfg, run_dir, env.rank):  # model.init_from=hf:DIR
        log.info(note)
    strategy = build_strategy(cfg, derived, env)
    model = parallelize(model, cfg, strategy, log.info)  # log.info: the train.fp8 decision
    strategy.build_optimizer()
    log.info(
        f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} params "
        f"on this rank | strategy {cfg.parallel.strategy}"
    )

    # ---- resume (checkpoint.resume=auto: the latest checkpoint if any, so reruns are idempotent)
    ckpt = CheckpointManager(cfg, run_dir, env.rank)
    step = 0
    if (path := ckpt.find_resume()) is not None:
        state = ckpt.load(strategy, path)
        step = state["step"]
        loader.load_state_dict(state["loader"])
        log.info(f"resumed from {path} at step {step}")
    log.rewind(step)  # metrics of steps after it came from a run whose updates were lost

    # ---- loop ----------------------------------------------------------------------------------
    result = TrainResult(run_dir, step)
    autocast = (
        (lambda: torch.autocast(env.device.type, torch.bfloat16))
        if bf16
        else (contextlib.nullcontext)
    )
    window = LogWindow()
    nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    report_skip = _skip_reporter(result, log)
    spikes = SpikeDetector(cfg.train.spike_factor)
    saved_step = step
    with PreemptionWatch() as preemption:
        while step < cfg.train.steps:
            lr = lr_at(step, cfg.train)
            strategy.set_lr(lr)
            batch = loader.next_batch()  # test fault injection is keyed by the batch's number:
            factor = injected_loss_factor(loader.batches_consumed)  # 1.0 unless injecting
            loss = train_step(model, strategy, batch, autocast, factor)
            grad_norm = strategy.step()  # a device tensor: no host sync in the step
            step += 1
            window.add(step, loss)
            nonfinite.add(step, grad_norm)  # read on the host at log / checkpoint steps
            if spikes.enabled and spikes.is_spike(all_reduce_mean(loss.item(), env.device)):
                log.info(
                    f"step {step}: loss spike > {spikes.threshold():.4f} (train.spike_factor "
                    f"x moving average of the loss)"
                )
                if (
                    cfg.train.spike_rollback
                    and (back := roll_back(ckpt, strategy, step, result, log)) is not None
                ):
                    window.log(log, result, cfg, lr, grad_norm, env.device)
                    log.rewind(back)  # the steps after `back` are trained again: one row each
                    step = back
                    continue

            if _due(step, cfg.logging.log_every_steps, cfg.train.steps) or _due(
                step, cfg.checkpoint.every_steps, cfg.train.steps
            ):  # raises after train.max_nonfinite_steps in a row
                nonfinite.flush(ckpt.latest, report_skip)
            if _due(step, cfg.logging.log_every_steps, cfg.train.steps):
                window.log(log, result, cfg, lr, grad_norm, env.device)
            if (val := evaluator.run(step, model, autocast)) is not None:  # when due
                result.val_losses[step] = val
            if _due(step, cfg.checkpoint.every_steps, cfg.train.steps):
                log.info(f"checkpoint {ckpt.save(strategy, step, {'loader': loader.state_dict()})}")
                saved_step = step
            debug_pause("step", step)
            if step < cfg.train.steps and preemption.agreed():  # every rank stops after this step
                nonfinite.flush(ckpt.latest, report_skip)
                if saved_step != step:
                    saved = ckpt.save(strategy, step, {"loader": loader.state_dict()})
                    log.info(f"checkpoint {saved}")
                result.preempted = preemption.signal_name
                log.info(
                    f"{preemption.signal_name}: stopped after step {step}; rerun the same "
                    f"command to resume (exit {EXIT_REQUEUE})"
                )
                break

    ckpt.wait()  # an asynchronous checkpoint still being written is committed before we return
    result.final_step = step
    if cfg.train.sample_tokens and not result.preempted:
        result.sample = sample_text(model, cfg, env.device)
        log.info(f"sample:\n{result.sample}")
    loader.close()
    log.close()
    return result


def _skip_reporter(result: TrainResult, log: MetricsLogger):
    def report(step: int, grad_norm: float, in_row: int) -> None:
        result.skipped_steps.append(step)
        log.info(
            f"step {step}: non-finite grad norm {grad_norm}, update skipped ({in_row} in a row)"
        )

    return report


def _due(step: int, every: int, last: int) -> bool:
    """Interval work (log, eval, checkpoint) runs every `every` steps (0 = never) and at the end."""
    return (every > 0 and step % every == 0) or step == last


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


def train_step(
    model: nn.Module, strategy: Strategy, micro_batches: list, autocast, loss_factor: float = 1.0
) -> torch.Tensor:
    """Forward + backward over this rank's micro-batches; returns the mean loss (a tensor).

    `loss_factor` is 1 except under test fault injection (a NaN or spiking batch)."""
    n = len(micro_batches)
    total = torch.zeros((), device=micro_batches[0][0].device)
    for i, (inputs, targets) in enumerate(micro_batches):  # each (micro_batch, seq_len)
        sync = contextlib.nullcontext() if i == n - 1 else strategy.no_sync()
        with sync:
            with autocast():
                loss = model(inputs, targets) / n
                if loss_factor != 1.0:
                    loss = loss * loss_factor
            strategy.backward(loss)
        total += loss.detach()
    return total


def flush_losses(pending: list, device: torch.device) -> dict[int, float]:
    """One all-reduce for every step since the last log: per-step global mean losses."""
    stacked = torch.stack([loss.float() for _, loss in pending]).to(device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(stacked)
        stacked /= torch.distributed.get_world_size()
    return {s: v for (s, _), v in zip(pending, stacked.tolist(), strict=True)}
