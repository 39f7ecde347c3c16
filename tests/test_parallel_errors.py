"""A failure on one rank brings the whole job down with that rank's error; nothing hangs."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from dist_utils import run_distributed, torchrun
from test_parallel_equivalence import tiny_overrides

pytestmark = pytest.mark.slow


def train_failing_on_rank1(data_dir: str, run_dir: str, fail_at_step: int) -> None:
    """Worker: the real train CLI, with rank 1's optimizer step raising at `fail_at_step`.

    Rank 0 is then inside the next step's gradient all-reduce, waiting for a peer that is gone:
    the job must end with rank 1's traceback, not wait for the collective timeout.
    """
    import torch.distributed as dist

    from distlm.parallel.ddp import DDPStrategy
    from distlm.train.cli import main

    original, calls = DDPStrategy.step, []

    def step(self):
        calls.append(1)
        if dist.get_rank() == 1 and len(calls) == fail_at_step:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            Path(run_dir, "failed_at").write_text(repr(time.time()))  # the test times from here
            raise RuntimeError(f"injected failure at step {fail_at_step}")
        return original(self)

    DDPStrategy.step = step
    sys.exit(main(["train", *tiny_overrides(data_dir, run_dir), "parallel.timeout_minutes=5"]))


def test_exception_on_one_rank_stops_the_job_with_its_rank(tiny_dataset, tmp_path):
    proc = run_distributed(
        "test_parallel_errors:train_failing_on_rank1",
        2,
        timeout_s=240,  # < the 5-minute collective timeout: a job that waits on rank 1 fails here
        check=False,
        data_dir=str(tiny_dataset),
        run_dir=str(tmp_path / "run"),
        fail_at_step=3,
    )
    ended = time.time()
    assert proc.returncode != 0, proc.output[-3000:]
    assert "[rank 1] failed" in proc.output, proc.output[-3000:]
    assert "RuntimeError: injected failure at step 3" in proc.output
    # timed from the failure, not from the launch (start-up on a loaded machine is not the
    # question): the collective timeout is 5 minutes, ending well before it means nobody waited
    elapsed = ended - float((tmp_path / "run" / "failed_at").read_text())
    assert elapsed < 90, f"job took {elapsed:.0f}s to end after a rank failed"


def test_indivisible_global_batch_is_refused_with_one_line_naming_valid_values(
    tiny_dataset, tmp_path
):
    args = tiny_overrides(str(tiny_dataset), str(tmp_path / "run"))
    args += ["train.global_batch_tokens=96", "train.micro_batch_size=0"]  # 3 samples of 32 tokens
    proc = torchrun(["launch/train.py", *args], nproc=2, timeout_s=120, check=False)
    assert proc.returncode != 0
    message = (
        "train.global_batch_tokens=96 is 3 samples of seq_len 32, which does not split over "
        "world size 2; nearest valid train.global_batch_tokens: 64 or 128"
    )
    # every rank checks the config before the rendezvous and refuses with the same line; the
    # first to exit makes torchrun stop the others, maybe before they print: any rank's line
    # counts, and every error line printed is this one
    errors = re.findall(r"^\[rank (\d)\] error: (.*)$", proc.output, re.MULTILINE)
    assert errors, proc.output[-3000:]
    assert all(line == message for _, line in errors), errors
