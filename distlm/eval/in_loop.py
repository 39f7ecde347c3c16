"""Evaluation inside the training loop: validation every `train.eval_every_steps`, multiple-choice
tasks every `eval.every_steps`, both also at the last step, logged through the run's logger.

Everything is opened and checked when the evaluator is built (val splits, tokenizer, every task
file's lines), so a bad task file stops the run before step 0, naming the file and line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import nn

from distlm.config import Config, ConfigError, EvalConfig
from distlm.data import load_tokenizer
from distlm.eval.multiple_choice import Request, accuracy, build_requests, score_requests
from distlm.eval.tasks import EvalError, Task, check_at_least, load_task
from distlm.eval.validation import Validation, build_validation


def check_eval_config(cfg: EvalConfig) -> None:
    limits = [
        ("eval.every_steps", cfg.every_steps, 0),
        ("eval.batch_size", cfg.batch_size, 1),
        ("eval.max_examples", cfg.max_examples, 0),
    ]
    check_at_least(limits, ConfigError)


def due(step: int, every: int, last: int) -> bool:
    """Interval work (log, eval, checkpoint) runs every `every` steps (0 = never) and at the end."""
    return (every > 0 and step % every == 0) or step == last


class Evaluator:
    """`run(step, model, autocast)`: the evaluations due at `step`; returns the val loss if run."""

    def __init__(
        self,
        cfg: Config,
        validation: Validation | None,
        tasks: list[tuple[Task, list[Request]]],
        log,
        device,
    ) -> None:
        self.cfg, self.validation, self.tasks = cfg, validation, tasks
        self.log, self.device = log, device  # log: the run's MetricsLogger

    def run(
        self, step: int, model: nn.Module, autocast: Callable = contextlib.nullcontext
    ) -> float | None:
        last, val_loss = self.cfg.train.steps, None
        if self.validation and due(step, self.cfg.train.eval_every_steps, last):
            scalars = self.validation.run(model, autocast)
            self.log.log(step, scalars, prefix="val")
            val_loss = scalars["loss"]
        if self.tasks and due(step, self.cfg.eval.every_steps, last):
            scalars = {}
            for task, requests in self.tasks:
                loglik = score_requests(
                    model, requests, self.cfg.eval.batch_size, autocast, self.device
                )
                for key, value in accuracy(task, requests, loglik).items():
                    scalars[f"{task.name}/{key}"] = value
            self.log.log(step, scalars, prefix="eval")
        return val_loss


def build_evaluator(cfg: Config, log, **data_args) -> Evaluator:
    """Open the val splits and read the task files (errors before step 0)."""
    check_eval_config(cfg.eval)
    validation = build_validation(cfg.data, cfg.train.eval_batches, **data_args)
    tasks = []
    if cfg.eval.tasks:
        tokenizer = load_tokenizer(cfg.data.path)
        for path in cfg.eval.tasks:
            task = load_task(path, cfg.eval.max_examples)
            if any(t.name == task.name for t, _ in tasks):
                raise EvalError(f"eval.tasks: two task files are named {task.name!r}: rename one")
            tasks.append((task, build_requests(task, tokenizer, cfg.train.seq_len)))
    return Evaluator(cfg, validation, tasks, log, data_args["device"])
