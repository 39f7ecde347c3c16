"""Asynchronous checkpoints (checkpoint.async_save=true, DCP strategies): training goes on while
a checkpoint is written, `latest` moves only once every rank's write is durable, and a kill -9
during the write leaves the previous checkpoint as `latest`, from which the rerun resumes exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest
from dist_utils import torchrun
from test_fault_torchrun import STEPS, Job, args, latest, logged, losses

from distlm.config import ConfigError
from distlm.config_loader import load_config

ASYNC = "checkpoint.async_save=true"


@pytest.fixture(scope="module")
def async_run(tiny_dataset, tmp_path_factory) -> dict:
    """A 2-process async-save run killed (-9) while step 8's write awaits its commit, then rerun
    to the end: what was seen before the kill, and the rerun's output."""
    root = tmp_path_factory.mktemp("async")
    run, seen = root / "run", {}
    # both ranks' commit threads wait (600 s: killed long before) once step 8's files are written
    job = Job(
        args(tiny_dataset, run, ASYNC), root / "1.log", {"DISTLM_DEBUG_PAUSE": "commit@8=600"}
    )
    try:
        job.wait_for(lambda: job.output().count("debug pause at commit@8") == 2)  # both ranks
        job.wait_for(logged(run, 10))  # the loop went on past step 8 while its save was pending
        seen["written"] = sorted(
            p.name for p in (run / "checkpoints/step-00000008.tmp/state").iterdir()
        )
        seen["latest"] = latest(run)
    finally:
        os.killpg(job.proc.pid, signal.SIGKILL)  # agent and both ranks, mid-commit
        job.wait(30)
    seen["latest_after_kill"] = latest(run)
    seen["step_8_committed"] = (run / "checkpoints" / "step-00000008").exists()
    seen["killed_losses"] = losses(run)
    seen["rerun"] = torchrun(args(tiny_dataset, run, ASYNC), timeout_s=240).output
    return {"run": run, **seen}


def test_kill_9_during_async_write_keeps_previous_latest_and_resume_is_exact(async_run):
    run = async_run["run"]
    assert async_run["written"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # all ranks'
    assert async_run["latest"] == async_run["latest_after_kill"] == "step-00000004"
    assert not async_run["step_8_committed"]

    assert "step-00000004 at step 4" in async_run["rerun"]
    assert f"checkpoint {run}/checkpoints/step-{STEPS:08d} committed" in async_run["rerun"]
    assert latest(run) == f"step-{STEPS:08d}"  # the end of training waited for the last save
    resumed, killed = losses(run), async_run["killed_losses"]
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert all(resumed[s] == killed[s] for s in range(1, 11)), (killed, resumed)


def test_flipped_byte_in_rank_1s_share_stops_every_rank_with_one_message(
    async_run, tiny_dataset, tmp_path
):
    """Verification is split over the ranks (rank 1 hashes every second file) and gathered: the
    error is the same on every rank, whichever prints before torchrun stops the job."""
    run = tmp_path / "run"
    shutil.copytree(async_run["run"], run)
    step12 = run / "checkpoints" / f"step-{STEPS:08d}"
    shard = step12 / "state" / "__1_0.distcp"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01
    shard.write_bytes(bytes(raw))
    proc = torchrun(args(tiny_dataset, run, "train.steps=16"), timeout_s=240, check=False)
    errors = re.findall(r"^\[rank \d\] error: (.*)$", proc.output, re.MULTILINE)
    assert proc.returncode != 0 and errors, proc.output[-3000:]
    assert len(set(errors)) == 1 and errors[0].startswith(f"{shard}: checksum mismatch"), errors
    assert f"checkpoint.resume={run}/checkpoints/step-00000008" in errors[0]


@pytest.mark.parametrize("strategy", ["zero1", "zero3"])
def test_async_save_with_deepspeed_is_refused_naming_the_key(strategy):
    with pytest.raises(ConfigError, match=f"checkpoint.async_save=true needs .*{strategy}"):
        load_config([f"parallel.strategy={strategy}", ASYNC])
