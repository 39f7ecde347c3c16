"""Faults injected for real into 2-process `torchrun -m distlm train` jobs (CPU, gloo).

kill -9 of one rank, kill -9 of the whole job inside a checkpoint write, SIGTERM to the torchrun
agent, SIGUSR1 to one rank, NaN losses. After each, the same command is run again (as slurm
`--requeue` would) and the per-step losses must equal an uninterrupted run's exactly.
Windows to kill in come from DISTLM_DEBUG_PAUSE (see distlm/train/fault.py), so the fault lands
at a known step rather than by timing luck.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_utils import ROOT, _env, torchrun

pytestmark = pytest.mark.slow

STEPS = 12
TINY = [
    "model.vocab_size=512",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.max_seq_len=64",
    "train.seq_len=32",
    "train.global_batch_tokens=512",
    f"train.steps={STEPS}",
    "train.warmup_steps=2",
    "train.eval_every_steps=0",
    "train.sample_tokens=0",
    "logging.log_every_steps=1",
    "logging.tensorboard=false",
    "checkpoint.every_steps=4",
]


@pytest.fixture(scope="module")
def data(tiny_dataset) -> Path:
    return tiny_dataset  # conftest.py: a small real dataset, vocab 512, shared by the session


def args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["-m", "distlm", "train", *TINY, f"data.path={data}", f"logging.run_dir={run}", *extra]


def losses(run: Path) -> dict[int, float]:
    """Per-step train loss from metrics.jsonl; a step logged twice (rerun) keeps its last value."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def latest(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


def final_state(run: Path) -> dict[str, bytes]:
    """The bytes of the last checkpoint's model + optimizer shards (bit-exactness, unrounded)."""
    state = run / "checkpoints" / f"step-{STEPS:08d}" / "state"
    return {p.name: p.read_bytes() for p in sorted(state.glob("*.distcp"))}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference")
    torchrun(args(data, run), timeout_s=240)
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    return run


def assert_same_as(reference: Path, run: Path) -> None:
    """Every logged loss equal (metrics.jsonl keeps 6 decimals) and the final weights and
    optimizer states equal bit for bit."""
    assert losses(run) == losses(reference)
    assert final_state(run) == final_state(reference)


class Job:
    """A torchrun job in its own session, so the test can signal any of its processes."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        ignore_usr1: bool = False,
    ):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "--max_restarts=0",
            *argv,
        ]
        self.log = log
        # like slurm/train.sbatch: torchrun ignores USR1 (inherited by the workers, which re-arm)
        pre = (lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN)) if ignore_usr1 else None
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=_env(env),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pre,
            )

    def ranks(self) -> dict[int, int]:
        """LOCAL_RANK -> pid of the agent's worker processes."""
        found = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                    continue
                env = dict(
                    kv.split("=", 1)
                    for kv in (d / "environ").read_bytes().decode().split("\0")
                    if "=" in kv
                )
            except (OSError, IndexError, ValueError):
                continue
            found[int(env["LOCAL_RANK"])] = int(d.name)
        return found

    def wait_for(self, what, timeout_s: float = 120) -> None:
        end = time.monotonic() + timeout_s
        while not what():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"job ended (exit {self.proc.returncode}) before the fault:"
                    f"\n{self.output()[-6000:]}"
                )
            assert time.monotonic() < end, f"timed out waiting\n{self.output()[-6000:]}"
            time.sleep(0.05)

    def wait(self, timeout_s: float = 120) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"job hung\n{self.output()[-6000:]}") from None

    def output(self) -> str:
        return self.log.read_text()


def logged(run: Path, step: int):
    return lambda: (run / "metrics.jsonl").exists() and step in losses(run)


def test_kill_one_rank_brings_job_down_and_rerun_resumes_bit_identical(data, reference, tmp_path):
    run = tmp_path / "run"
    job = Job(args(data, run), tmp_path / "1.log", env={"DISTLM_DEBUG_PAUSE": "step@6=1.5"})
    job.wait_for(logged(run, 6))
    os.kill(job.ranks()[1], signal.SIGKILL)
    t0 = time.monotonic()
    assert job.wait(60) != 0
    down_s = time.monotonic() - t0
    assert down_s < 30, f"job took {down_s:.1f}s to go down after kill -9 of rank 1"
    assert latest(run) == "step-00000004"

    rerun = torchrun(args(data, run), timeout_s=240)
    assert "resumed from" in rerun.output and "step-00000004 at step 4" in rerun.output
    assert_same_as(reference, run)  # steps 5..12 recomputed after resume


def test_kill_job_during_checkpoint_write_keeps_previous_latest(data, reference, tmp_path):
    run = tmp_path / "run"
    job = Job(args(data, run), tmp_path / "1.log", env={"DISTLM_DEBUG_PAUSE": "checkpoint@8=60"})
    tmp = run / "checkpoints" / "step-00000008.tmp"
    job.wait_for(lambda: (tmp / "trainer_state.json").exists())
    os.killpg(job.proc.pid, signal.SIGKILL)  # agent and both ranks, mid-commit
    job.wait(30)
    assert latest(run) == "step-00000004" and tmp.exists()
    assert not (run / "checkpoints" / "step-00000008").exists()

    rerun = torchrun(args(data, run), timeout_s=240)
    assert "step-00000004 at step 4" in rerun.output
    assert latest(run) == f"step-{STEPS:08d}" and not tmp.exists()
    assert_same_as(reference, run)


def test_sigterm_to_torchrun_checkpoints_and_exits_then_resumes(data, reference, tmp_path):
    run = tmp_path / "run"
    job = Job(args(data, run), tmp_path / "1.log", env={"DISTLM_DEBUG_PAUSE": "step@6=1.5"})
    job.wait_for(logged(run, 6))
    job.proc.send_signal(signal.SIGTERM)  # torchrun forwards SIGTERM to both ranks
    job.wait(60)
    out = job.output()
    assert "SIGTERM: stopped after step 6" in out, out[-4000:]
    assert latest(run) == "step-00000006"  # saved at the preemption, not at a multiple of 4
    assert max(losses(run)) == 6

    rerun = torchrun(args(data, run), timeout_s=240)
    assert "step-00000006 at step 6" in rerun.output
    assert_same_as(reference, run)  # nothing lost


def test_sigusr1_to_one_rank_stops_all_ranks_with_requeue_status(data, tmp_path):
    run = tmp_path / "run"
    job = Job(
        args(data, run),
        tmp_path / "1.log",
        env={"DISTLM_DEBUG_PAUSE": "step@5=1.5"},
        ignore_usr1=True,
    )
    job.wait_for(logged(run, 5))
    os.kill(job.ranks()[1], signal.SIGUSR1)  # rank 0 learns it through the all-reduce
    job.wait(60)
    out = job.output()
    assert "stopped after step 5" in out, out[-4000:]
    assert "exitcode  : 3" in out  # EXIT_REQUEUE, as torchrun reports its failed workers
    assert latest(run) == "step-00000005" and max(losses(run)) == 5


def test_nan_steps_are_skipped_and_too_many_in_a_row_stop_the_run(data, tmp_path):
    run = tmp_path / "run"
    proc = torchrun(
        args(data, run, "train.max_nonfinite_steps=3"),
        timeout_s=240,
        check=False,
        env={"DISTLM_INJECT_LOSS": "3:nan,6:nan,7:nan,8:nan"},
    )
    assert proc.returncode != 0
    out = proc.output
    assert "step 3: non-finite grad norm nan, update skipped (1 in a row)" in out
    assert "3 non-finite steps in a row ending at step 8" in out
    assert "last good checkpoint: " in out and "step-00000004" in out
    got = losses(run)
    assert all(got[s] == got[s] for s in (1, 2, 4, 5)), got  # finite: the NaN was not applied
    assert got[3] != got[3] and latest(run) == "step-00000004"
