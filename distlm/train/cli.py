"""`python -m distlm train|config|params|sample [presets] [key=value ...]`.

Errors a user can fix (config, data, checkpoint, too many non-finite steps, out of memory) print
one clear line and exit 2; any other exception prints its rank and traceback and exits 1, which
makes torchrun stop every rank. A run stopped by SIGTERM / SIGUSR1 after saving its checkpoint
exits `EXIT_REQUEUE` (3): run the same command again to resume.
"""

from __future__ import annotations

import os
import sys
import traceback

from distlm.config import ConfigError
from distlm.config_loader import load_config, to_yaml

EXIT_USER_ERROR = 2


def _user_errors() -> tuple[type[Exception], ...]:
    from distlm.checkpoint import CheckpointError
    from distlm.data import DataError
    from distlm.eval.tasks import EvalError
    from distlm.export import ExportError
    from distlm.train.numerics import TrainingError

    return ConfigError, DataError, CheckpointError, TrainingError, EvalError, ExportError


def _rank() -> str:
    return os.environ.get("RANK", "0")


def cmd_train(args: list[str]) -> int:
    cfg = load_config(args)
    for key, value in cfg.hardware.nccl_env.items():  # preset NCCL settings; the shell wins
        os.environ.setdefault(key, str(value))
    from distlm.parallel import destroy_distributed
    from distlm.train.fault import EXIT_REQUEUE, is_oom, oom_report
    from distlm.train.trainer import train

    try:
        result = train(cfg)
    except Exception as e:
        if not is_oom(e):
            raise
        print(f"[rank {_rank()}] error: {oom_report(cfg)}", file=sys.stderr, flush=True)
        return _fail(EXIT_USER_ERROR)
    destroy_distributed()  # only on success: a failed rank must not wait for its peers
    if result.preempted:
        return EXIT_REQUEUE
    if _rank() == "0" and result.losses:
        last = max(result.losses)
        val = (
            f", val loss {result.val_losses[max(result.val_losses)]:.4f}"
            if result.val_losses
            else ""
        )
        print(
            f"done: step {result.final_step}, train loss {result.losses[last]:.4f}{val}; "
            f"run dir {result.run_dir}"
        )
    return 0


def cmd_params(args: list[str]) -> int:
    from distlm.model import count_params, non_embedding_params

    cfg = load_config(args)
    m = cfg.model
    print(
        f"model {m.name}: {count_params(m):,} parameters "
        f"({non_embedding_params(m):,} in matmuls incl. the output head); "
        f"d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads / {m.n_kv_heads} KV heads"
    )
    return 0


def cmd_config(args: list[str]) -> int:
    print(to_yaml(load_config(args)), end="")
    return 0


COMMANDS = {"train": cmd_train, "params": cmd_params, "config": cmd_config}


def _fail(code: int) -> int:
    """In a multi-process job, leave at once: a clean interpreter exit can block in process-group
    teardown or in a peer's collective. Dying closes our sockets, so the peers' collectives fail
    and torchrun stops the job (no hang until the collective timeout)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    try:
        return COMMANDS[command](args)
    except _user_errors() as e:
        print(f"[rank {_rank()}] error: {e}", file=sys.stderr, flush=True)
        return _fail(EXIT_USER_ERROR)
    except Exception:
        print(f"[rank {_rank()}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return _fail(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
