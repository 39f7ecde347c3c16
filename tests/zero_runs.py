"""Real ZeRO checkpoints, made once per test session for test_zero_tools.py and
test_zero_reshard.py (conftest's `zero_runs` fixture), with the trainer and tiny config of
test_parallel_equivalence.py (20 steps, checkpoints at 10 and 20):

  1. python, 1 process: w1_zero1, w1_ddp;
  2. torchrun, 2 processes: w2_zero2, w2_zero3; w2_zero1_from_w1 (ZeRO-1, 1 -> 2 processes) and
     w2_zero3_from_ddp (a DCP checkpoint continued under ZeRO-3) resume from step 10;
  3. python, 1 process: w1_fsdp2_from_zero2 (ZeRO-2 -> FSDP2), w1_zero2_from_w2 and
     w1_zero3_from_w2 (2 -> 1 process), w1_ddp_from_zero3 (ZeRO-3 -> DDP) resume from step 10;
     its output is kept in `w1_resume.log`.
Before launch 3, the debris of a killed conversion (a dead process's `universal.tmp-<host>-<pid>`)
is left where the ZeRO-2 one will be made.
"""

from __future__ import annotations

import socket
from pathlib import Path

from dist_utils import run_distributed
from test_parallel_equivalence import RESUME_AT

WORKER = "test_parallel_equivalence:train_runs"


def checkpoint(root: Path, run: str, step: int = RESUME_AT) -> Path:
    return root / run / "checkpoints" / f"step-{step:08d}"


def make_zero_runs(root: Path, data: Path) -> Path:
    args = dict(root=str(root), data_dir=str(data))
    run_distributed(WORKER, 1, runs=[["w1_zero1", "zero1", None], ["w1_ddp", "ddp", None]], **args)
    two = [["w2_zero2", "zero2", None], ["w2_zero3", "zero3", None]]
    two += [["w2_zero1_from_w1", "zero1", "w1_zero1"], ["w2_zero3_from_ddp", "zero3", "w1_ddp"]]
    run_distributed(WORKER, 2, timeout_s=420, runs=two, **args)
    dead_pid = 2**22 + 1  # above Linux's largest pid: no such process
    debris = checkpoint(root, "w2_zero2") / f"universal.tmp-{socket.gethostname()}-{dead_pid}"
    debris = debris / "zero"
    debris.mkdir(parents=True)
    (debris / "mp_rank_00_model_states.pt").write_bytes(b"half-written")
    one = [["w1_fsdp2_from_zero2", "fsdp2", "w2_zero2"], ["w1_zero2_from_w2", "zero2", "w2_zero2"]]
    one += [["w1_zero3_from_w2", "zero3", "w2_zero3"], ["w1_ddp_from_zero3", "ddp", "w2_zero3"]]
    proc = run_distributed(WORKER, 1, runs=one, **args)
    (root / "w1_resume.log").write_text(proc.output)
    return root
