"""The training loop: setup -> build -> parallelize -> optimizer -> data -> resume -> loop.

Read it top to bottom. Everything strategy-specific hides behind `Strategy`; everything that
only rank 0 does hides behind `MetricsLogger`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distlm.checkpoint import CheckpointManager
from distlm.config import Config, resolve
from distlm.config_loader import save_config
from distlm.data import build_train_loader, build_val_loader, load_tokenizer
from distlm.model import build_model
from distlm.parallel import Strategy, build_strategy, init_distributed, parallelize
from distlm.parallel.env import all_reduce_mean
from distlm.train.metrics import MetricsLogger, peak_memory_gb
from distlm.train.sample import generate
from distlm.train.schedule import lr_at


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); the message says what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based) -> mean train loss
    val_losses: dict[int, float] = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)
    sample: str | None = None


def train(cfg: Config) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------
    env = init_distributed(cfg.train.device, cfg.parallel.timeout_minutes)
    derived = resolve(cfg, env.world_size)
    run_dir = Path(cfg.logging.run_dir)
    log = MetricsLogger(cfg, run_dir, enabled=env.is_main, world_size=env.world_size)
    if env.is_main:
        save_config(cfg, run_dir / "config.yaml")
    log.info(f"world size {env.world_size} on {env.device} | {derived}")
    bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and env.device.type == "cuda")

    # ---- data (validated before anything is built: fail before step 0) --------------------
    data_args = dict(seq_len=cfg.train.seq_len, global_batch_size=derived.global_batch_size,
                     micro_batch_size=derived.micro_batch_size, rank=env.rank,
                     world_size=env.world_size, device=env.device,
                     vocab_size=cfg.model.vocab_size)
    loader = build_train_loader(cfg.data, **data_args)
    val_loader = build_val_loader(cfg.data, num_batches=cfg.train.eval_batches, **data_args)

    # ---- model, parallelism, optimizer --------------------------------------------------------
    torch.manual_seed(cfg.train.seed)  # identical init on every rank
    model = build_model(cfg.model, env.device)
    strategy = build_strategy(cfg, derived, env)
    model = parallelize(model, cfg, strategy)
    strategy.build_optimizer()
    log.info(f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} params "
             f"on this rank | strategy {cfg.parallel.strategy}")

    # ---- resume ---------------------------------------------------------------------------------
    ckpt = CheckpointManager(cfg, run_dir, env.rank)
    step = 0
    if (path := ckpt.find_resume()) is not None:
        state = ckpt.load(strategy, path)
        step = state["step"]
        loader.load_state_dict(state["loader"])
        log.info(f"resumed from {path} at step {step}")

    # ---- loop -------------------------------------------------------------------------------------
    result = TrainResult(run_dir, step)
    autocast = (lambda: torch.autocast(env.device.type, torch.bfloat16)) if bf16 else (
        contextlib.nullcontext)
    pending: list[tuple[int, torch.Tensor, float]] = []  # (step, loss, grad norm) awaiting a log
    window_start, window_steps, nonfinite_run = time.perf_counter(), 0, 0
    while step < cfg.train.steps:
        lr = lr_at(step, cfg.train)
        strategy.set_lr(lr)
        loss = train_step(model, strategy, loader.next_batch(), autocast)
        grad_norm = strategy.step()
        step += 1
        window_steps += 1
        pending.append((step, loss, grad_norm))

        if math.isfinite(grad_norm):
            nonfinite_run = 0
        else:  # the strategy skipped this update
            nonfinite_run += 1
            result.skipped_steps.append(step)
            log.info(f"step {step}: non-finite grad norm, update skipped ({nonfinite_run} in a row)")
            if nonfinite_run >= cfg.train.max_nonfinite_steps:
                latest = ckpt.find_resume() if cfg.checkpoint.resume != "never" else None
                raise TrainingError(
                    f"{nonfinite_run} non-finite steps in a row ending at step {step} "
                    f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); last good "
                    f"checkpoint: {latest or 'none'}. Lower train.lr or check the data."
                )

        if step % cfg.logging.log_every_steps == 0 or step == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            losses = flush_losses(pending, env.device)
            result.losses.update(losses)
            tokens_per_s = window_steps * cfg.train.global_batch_tokens / elapsed
            log.log(step, {"loss": losses[step], "lr": lr, "grad_norm": grad_norm,
                           "tokens_per_s": tokens_per_s, "step_time_s": elapsed / window_steps,
                           "mfu": log.mfu(tokens_per_s),
                           "peak_mem_gb": peak_memory_gb(env.device)})
            pending.clear()
            window_start, window_steps = time.perf_counter(), 0

        if val_loader is not None and (
            (cfg.train.eval_every_steps and step % cfg.train.eval_every_steps == 0)
            or step == cfg.train.steps
        ):
            val = evaluate(model, val_loader, autocast, env.device)
            result.val_losses[step] = val
            log.log(step, {"loss": val, "perplexity": math.exp(min(val, 50))}, prefix="val")

        if (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or (
            step == cfg.train.steps
        ):
            saved = ckpt.save(strategy, step, {"loader": loader.state_dict()})
            log.info(f"checkpoint {saved}")

    result.final_step = step
    if cfg.train.sample_tokens:
        result.sample = sample_text(model, cfg, env.device)
        log.info(f"sample:\n{result.sample}")
    loader.close()
    log.close()
    return result


def train_step(model: nn.Module, strategy: Strategy, micro_batches: list, autocast) -> torch.Tensor:
    """Forward + backward over this rank's micro-batches; returns the mean loss (a tensor)."""
    n = len(micro_batches)
    total = torch.zeros((), device=micro_batches[0][0].device)
    for i, (inputs, targets) in enumerate(micro_batches):  # each (micro_batch, seq_len)
        sync = contextlib.nullcontext() if i == n - 1 else strategy.no_sync()
        with sync:
            with autocast():
                loss = model(inputs, targets) / n
            strategy.backward(loss)
        total += loss.detach()
    return total


def flush_losses(pending: list, device: torch.device) -> dict[int, float]:
    """One all-reduce for every step since the last log: per-step global mean losses."""
    stacked = torch.stack([loss.float() for _, loss, _ in pending]).to(device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(stacked)
        stacked /= torch.distributed.get_world_size()
    return {s: v for (s, _, _), v in zip(pending, stacked.tolist(), strict=True)}


@torch.no_grad()
def evaluate(model: nn.Module, val_loader, autocast, device: torch.device) -> float:
    model.eval()
    losses = []
    for inputs, targets in val_loader:
        with autocast():
            losses.append(model(inputs, targets).float().item())
    model.train()
    return all_reduce_mean(sum(losses) / max(1, len(losses)), device)


def sample_text(model: nn.Module, cfg: Config, device: torch.device) -> str:
    tokenizer = load_tokenizer(cfg.data.path)
    prompt = tokenizer.encode("def ")
    out = generate(model, prompt, cfg.train.sample_tokens, cfg.train.seq_len,
                   cfg.model.vocab_size, device, seed=cfg.train.seed)
    return tokenizer.decode(prompt + out)
