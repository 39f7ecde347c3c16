"""The one way tests start real multi-process jobs: torchrun, gloo, CPU.

    torchrun(["launch/train.py", "model=tiny", ...], nproc=2)        # any script + args
    run_distributed("test_parallel_equivalence:worker", 2, out=str(p))  # a function per rank

Both return the finished process (stdout+stderr in `.output`) and raise `DistributedTestError`
with the combined output when the job fails or exceeds its timeout, so a failing test shows every
rank's traceback. Workers run with `tests/` and the repo root on sys.path.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class DistributedTestError(AssertionError):
    pass


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    path = [str(ROOT), str(TESTS), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        PYTHONUNBUFFERED="1",
        **(extra or {}),
    )
    return env


def run_command(
    cmd: list[str], timeout_s: float = 300, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `cmd` from the repo root; stdout and stderr merged into `.output`."""
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise DistributedTestError(f"timed out after {timeout_s}s: {cmd}\n{out[-8000:]}") from e
    proc.output = proc.stdout
    if check and proc.returncode != 0:
        raise DistributedTestError(
            f"exit {proc.returncode}: {' '.join(cmd)}\n{proc.output[-12000:]}"
        )
    return proc


def torchrun(
    args: list[str],
    nproc: int = 2,
    timeout_s: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=nproc <args>` (a private c10d rendezvous)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--max_restarts=0",
        *args,
    ]
    return run_command(cmd, timeout_s, env, check)


def run_distributed(
    target: str,
    world_size: int,
    timeout_s: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
    **kwargs,
) -> subprocess.CompletedProcess:
    """Call `module:function(**kwargs)` on every rank of a `world_size`-process torchrun job.

    kwargs must be JSON-serialisable. world_size 1 runs plain `python` (no torchrun, no env
    vars): the single-process path users take, which must give the same numbers.
    """
    args = [__file__, target, json.dumps(kwargs)]
    if world_size == 1:
        return run_command([sys.executable, *args], timeout_s, env, check)
    return torchrun(args, world_size, timeout_s, env, check)


if __name__ == "__main__":  # the per-rank side of run_distributed
    module, func = sys.argv[1].split(":")
    sys.path[:0] = [str(ROOT), str(TESTS)]
    getattr(importlib.import_module(module), func)(**json.loads(sys.argv[2]))
