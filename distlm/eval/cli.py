"""`python -m distlm eval RUN_OR_CHECKPOINT --task FILE.jsonl [--task ...]`: downstream accuracy.

Loads the full weights of a checkpoint of any strategy (or a run dir's latest) in every process,
scores each task's (context, ending) pairs (one process, or spread over the ranks of a torchrun
job) and prints acc / acc_norm per task; `--out FILE.json` also writes them. Nothing is
downloaded: the task files are the user's (format: distlm/eval/tasks.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from distlm.checkpoint import CheckpointError
from distlm.config import Config
from distlm.data import DataError
from distlm.data.manifest import TOKENIZER_NAME
from distlm.eval.multiple_choice import evaluate_task
from distlm.eval.tasks import EvalError, Task, check_at_least, load_task

USAGE = ".venv/bin/python -m distlm eval RUN_OR_CHECKPOINT --task FILE.jsonl [--task ...]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distlm eval", usage=USAGE, description=__doc__)
    p.add_argument("checkpoint", type=Path, help="a checkpoint dir, or a run dir (its latest)")
    p.add_argument("--task", action="append", required=True, help="task .jsonl (repeatable)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward, per rank")
    p.add_argument("--max-examples", type=int, default=0, help="first N per task (0 = all)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.model (default: the run's dataset)")
    p.add_argument("--seq-len", type=int, default=0, help="longest input (0 = train.seq_len)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", type=Path, help="also write the results to this JSON file")
    return p


def load_checkpoint_model(
    checkpoint: Path, device: torch.device
) -> tuple[torch.nn.Module, Config, dict]:
    """The model of a checkpoint with its full fp32 weights, the run's config and trainer state."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from distlm.checkpoint.consolidate import find_checkpoint, load_full_state_dict
    from distlm.model import build_model

    checkpoint = find_checkpoint(checkpoint)
    with warnings.catch_warnings():  # DCP's "assuming ... a single process": that is the intent
        warnings.simplefilter("ignore", UserWarning)
        weights, state = load_full_state_dict(checkpoint)
    try:
        saved = OmegaConf.load(checkpoint / "config.yaml")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))
    except (OSError, OmegaConfBaseException) as e:
        raise CheckpointError(f"{checkpoint / 'config.yaml'}: unreadable run config ({e})") from e
    model = build_model(cfg.model, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: weights do not fit its model.* config ({e})") from e
    return model, cfg, state


def _tokenizer(args: argparse.Namespace, cfg: Config):
    from distlm.data import load_tokenizer
    from distlm.data.tokenizer import Tokenizer

    if args.tokenizer:
        return Tokenizer(args.tokenizer)
    try:
        return load_tokenizer(cfg.data.path)
    except DataError as e:
        raise EvalError(
            f"the run's dataset data.path={cfg.data.path!r} is not readable ({e}); "
            f"pass --tokenizer DATASET_DIR/{TOKENIZER_NAME}"
        ) from None


def run(args: argparse.Namespace) -> dict:
    """Evaluate every task; returns {"step", "checkpoint", "tasks": {name: {...}}}."""
    from distlm.parallel import init_distributed
    from distlm.parallel.base import train_dtype

    flags = [("--batch-size", args.batch_size, 1), ("--max-examples", args.max_examples, 0)]
    check_at_least([*flags, ("--seq-len", args.seq_len, 0)])
    tasks: list[Task] = [load_task(path, args.max_examples) for path in args.task]
    env = init_distributed(args.device)
    model, cfg, state = load_checkpoint_model(args.checkpoint, env.device)
    tokenizer = _tokenizer(args, cfg)
    max_len = args.seq_len or cfg.train.seq_len
    bf16 = train_dtype(cfg, env.device) == torch.bfloat16
    autocast = (
        (lambda: torch.autocast(env.device.type, torch.bfloat16))
        if bf16
        else contextlib.nullcontext
    )
    results = {}
    for task in tasks:
        scores = evaluate_task(
            model, task, tokenizer, max_len, args.batch_size, autocast, env.device
        )
        results[task.name] = {"examples": len(task.examples), **scores}
    return {"checkpoint": state["checkpoint"], "step": state["step"], "tasks": results}


def _report(results: dict, out: Path | None) -> None:
    print(f"{results['checkpoint']} (step {results['step']})")
    print(f"{'task':<24} {'examples':>8} {'acc':>8} {'acc_norm':>8}")
    for name, r in results["tasks"].items():
        print(f"{name:<24} {r['examples']:>8} {r['acc']:>8.4f} {r['acc_norm']:>8.4f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out)
        print(f"wrote {out}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:] if argv and argv[0] == "eval" else argv)
    rank = os.environ.get("RANK", "0")
    try:
        results = run(args)
    except (EvalError, CheckpointError, DataError) as e:
        print(f"[rank {rank}] error: {e}", file=sys.stderr, flush=True)
        return 2
    if rank == "0":
        _report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
