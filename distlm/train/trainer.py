"""The training loop: setup -> build -> parallelize -> optimizer -> data -> resume -> loop.

Read it top to bottom. Everything strategy-specific hides behind `Strategy`; everything that
only rank 0 does hides behind `MetricsLogger`; the work done on a schedule between steps (log,
evaluate, checkpoint, stop on preemption) hides behind `IntervalWork`, and loss-spike rollback
behind `SpikeGuard`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from distlm.checkpoint import CheckpointManager
from distlm.config import Config, resolve
from distlm.config_loader import save_config
from distlm.data import build_train_loader, loader_args
from distlm.eval.in_loop import build_evaluator
from distlm.export.hf_import import init_from_hf
from distlm.model import build_model
from distlm.parallel import Strategy, build_strategy, init_distributed, parallelize
from distlm.parallel.base import train_dtype
from distlm.parallel.env import launch_world_size
from distlm.plan.planner import check_host_ram  # parallel.offload: host RAM before step 0
from distlm.train.fault import PreemptionWatch, injected_loss_factor
from distlm.train.intervals import IntervalWork
from distlm.train.metrics import MetricsLogger
from distlm.train.result import TrainResult
from distlm.train.sample import sample_text
from distlm.train.schedule import lr_at
from distlm.train.spikes import SpikeGuard

__all__ = ["TrainResult", "train", "train_step"]


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
    data_args = loader_args(cfg, derived, env.rank, env.device)
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
    with PreemptionWatch() as preemption:
        work = IntervalWork(
            cfg, log, ckpt, strategy, loader, evaluator, preemption, result, env.device
        )
        spikes = SpikeGuard(cfg, log, ckpt, strategy, work, env.device)
        while step < cfg.train.steps:
            lr = lr_at(step, cfg.train)
            strategy.set_lr(lr)
            batch = loader.next_batch()  # test fault injection is keyed by the batch's number:
            factor = injected_loss_factor(loader.batches_consumed)  # 1.0 unless injecting
            loss = train_step(model, strategy, batch, autocast, factor)
            grad_norm = strategy.step()  # a device tensor: no host sync in the step
            step += 1
            work.record(step, loss, grad_norm)
            if (back := spikes.check(step, loss, lr, grad_norm)) is not None:
                step = back  # rolled back to the latest checkpoint (train.spike_rollback)
                continue
            if work.after_step(step, lr, grad_norm, model, autocast):  # log, eval, checkpoint
                break  # preempted: checkpointed, and a rerun resumes

    ckpt.wait()  # an asynchronous checkpoint still being written is committed before we return
    result.final_step = step
    if cfg.train.sample_tokens and not result.preempted:
        result.sample = sample_text(model, cfg, env.device)
        log.info(f"sample:\n{result.sample}")
    loader.close()
    log.close()
    return result


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
