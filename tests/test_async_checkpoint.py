"""Asynchronous checkpoints (checkpoint.async_save=true, DCP strategies): training goes on while
a checkpoint is written, `latest` moves only once every rank's write is durable, and a kill -9
during the write leaves the previous checkpoint as `latest`, from which the rerun resumes exactly.
"""

from __future__ import annotations

import os
import signal

import pytest
from dist_utils import torchrun
from test_fault_torchrun import STEPS, Job, args, latest, logged, losses

from distlm.config import ConfigError
from distlm.config_loader import load_config

ASYNC = "checkpoint.async_save=true"


def test_kill_9_during_async_write_keeps_previous_latest_and_resume_is_exact(
    tiny_dataset, tmp_path
):
    run = tmp_path / "run"
    # both ranks' commit threads wait 120 s after step 8's files are written, before the commit
    job = Job(
        args(tiny_dataset, run, ASYNC), tmp_path / "1.log", {"DISTLM_DEBUG_PAUSE": "commit@8=120"}
    )
    try:
        job.wait_for(lambda: job.output().count("debug pause at commit@8") == 2)  # both ranks
        job.wait_for(logged(run, 10))  # the loop went on past step 8 while its save was pending
        tmp = run / "checkpoints" / "step-00000008.tmp"
        assert sorted(p.name for p in (tmp / "state").iterdir()) == [
            ".metadata",
            "__0_0.distcp",
            "__1_0.distcp",
        ]  # every rank's files written, none committed
        assert latest(run) == "step-00000004"
    finally:
        os.killpg(job.proc.pid, signal.SIGKILL)  # agent and both ranks, mid-commit
        job.wait(30)
    killed = losses(run)
    assert latest(run) == "step-00000004" and not (run / "checkpoints" / "step-00000008").exists()

    rerun = torchrun(args(tiny_dataset, run, ASYNC), timeout_s=240)
    assert "step-00000004 at step 4" in rerun.output
    assert f"checkpoint {run}/checkpoints/step-{STEPS:08d} committed" in rerun.output
    assert latest(run) == f"step-{STEPS:08d}"  # the end of training waited for the last save
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert all(resumed[s] == killed[s] for s in range(1, 11)), (killed, resumed)


@pytest.mark.parametrize("strategy", ["zero1", "zero3"])
def test_async_save_with_deepspeed_is_refused_naming_the_key(strategy):
    with pytest.raises(ConfigError, match=f"checkpoint.async_save=true needs .*{strategy}"):
        load_config([f"parallel.strategy={strategy}", ASYNC])
