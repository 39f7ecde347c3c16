"""slurm/train.sbatch against a real slurm: two emulated nodes on this host (Debian's packages).

`tests/slurm/local_cluster.sh` starts munge, slurmctld and one slurmd per emulated node (installing
the packages with apt-get when missing); a `--nodes=2` job then runs one torchrun per node and a
real two-node c10d rendezvous over loopback. Skipped, with the reason, only where the daemons
cannot start (not root, no apt access, no slurm packages).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_utils import ROOT, run_command, run_distributed
from test_parallel_equivalence import LOSS_TOL, STEPS, tiny_overrides

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "tests" / "slurm" / "local_cluster.sh"


def _free_ports() -> tuple[int, int]:
    """Ports for slurmctld and slurmd (+23, +24: the two emulated nodes), free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base < 60000 and all(_port_free(p) for p in (base, base + 1, base + 24, base + 25)):
            return base, base + 1
    raise RuntimeError("no free ports for the test cluster")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Cluster:
    def __init__(self, base: Path):
        self.base, self.env = base, {"SLURM_CONF": str(base / "slurm.conf")}

    def cmd(self, *args: str) -> str:
        return run_command(list(args), timeout_s=30, env=self.env).output

    def submit(self, tmp: Path, overrides: list[str], env: dict[str, str] | None = None) -> str:
        job_env = {**self.env, "GPUS_PER_NODE": "1", "DISTLM_PYTHON": sys.executable, **(env or {})}
        out = run_command(
            [
                "sbatch",
                "--parsable",
                "--nodes=2",
                f"--output={tmp}/slurm-%j.out",
                "slurm/train.sbatch",
                *overrides,
            ],
            timeout_s=30,
            env=job_env,
        ).output
        return out.strip().split(";")[0]

    def diagnostics(self, job: str) -> str:
        """What slurm itself says of a job, for assertion messages."""
        ctld = self.base / "log" / "slurmctld.log"
        tail = ctld.read_text()[-3000:] if ctld.exists() else "(no slurmctld.log)"
        show = run_command(
            ["scontrol", "show", "job", job], timeout_s=30, env=self.env, check=False
        ).output
        return f"\n--- scontrol show job {job}\n{show}\n--- slurmctld.log tail\n{tail}"

    def state(self, job: str) -> dict[str, str]:
        text = self.cmd("scontrol", "show", "job", job)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(
        self,
        job: str,
        timeout_s: float = 180,
        until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"),
    ) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state(job)
            if state.get("JobState") in until:
                return state
            time.sleep(0.5)
        raise AssertionError(
            f"job {job} still {self.state(job).get('JobState')} after {timeout_s}s"
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the local slurm cluster needs root (slurmd runs the jobs as root)")
    base = Path(tmp_path_factory.mktemp("slurm"))
    ctld, slurmd = _free_ports()
    env = {
        "NNODES": "2",
        "BASE": str(base),
        "SLURMCTLD_PORT": str(ctld),
        "SLURMD_PORT": str(slurmd),
    }
    up = run_command(["bash", str(SCRIPT), "up"], timeout_s=300, env=env, check=False)
    if up.returncode != 0:
        pytest.skip(
            f"local slurm daemons could not start (exit {up.returncode}): "
            f"{up.output.strip()[-1500:]}"
        )
    yield Cluster(base)
    subprocess.run(["bash", str(SCRIPT), "down"], env={**os.environ, **env}, timeout=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_dataset) -> list[float]:
    """Per-step losses of the same config in one plain `python` process."""
    root = tmp_path_factory.mktemp("slurm_ref")
    run_distributed(
        "test_parallel_equivalence:train_runs",
        1,
        root=str(root),
        data_dir=str(tiny_dataset),
        runs=[["ref", "ddp", None]],
    )
    record = json.loads((root / "ref.json").read_text())
    return [v for _, v in sorted((int(k), v) for k, v in record["losses"].items())]


def logged_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from metrics.jsonl; a rerun's lines override the earlier ones."""
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def _assert_losses(run_dir: Path, reference: list[float]) -> None:
    got = logged_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    # metrics.jsonl rounds to 6 decimals
    torch.testing.assert_close(
        torch.tensor([got[s] for s in sorted(got)]),
        torch.tensor(reference),
        rtol=0,
        atol=LOSS_TOL + 1e-6,
    )


def test_two_node_job_matches_one_process(cluster, tiny_dataset, reference, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(str(tiny_dataset), str(run_dir))
    job = cluster.submit(tmp_path, [*args, "parallel.strategy=fsdp2", "logging.log_every_steps=1"])
    state = cluster.wait(job)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert state["JobState"] == "COMPLETED", log[-4000:]
    assert state["NodeList"] == "node[1-2]", state
    assert "2 node(s) x 1 process(es), rendezvous 127.0.0.1:" in log
    assert "world size 2" in log
    _assert_losses(run_dir, reference)


def test_preemption_signal_checkpoints_requeues_and_resumes_exactly(
    cluster, tiny_dataset, reference, tmp_path
):
    run_dir = tmp_path / "run"
    args = tiny_overrides(str(tiny_dataset), str(run_dir))
    args += ["parallel.strategy=ddp", "logging.log_every_steps=1", "checkpoint.resume=auto"]
    # every rank sleeps 10 s after step 4: a deterministic window for the signal
    job = cluster.submit(tmp_path, args, env={"DISTLM_DEBUG_PAUSE": "step@4=10"})
    out = tmp_path / f"slurm-{job}.out"
    deadline = time.monotonic() + 120
    while "debug pause at step@4" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, out.read_text()[-4000:] if out.exists() else "no log"
        assert cluster.state(job)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.5)
    cluster.cmd("scancel", "--signal=USR1", "--batch", job)  # what --signal=B:USR1@120 sends
    # the requeued job waits for its BeginTime (~2 min in slurm 22.05): start it now
    deadline = time.monotonic() + 120
    while int(cluster.state(job).get("Restarts", "0")) < 1:
        assert time.monotonic() < deadline, out.read_text()[-4000:]
        time.sleep(0.5)
    # slurmd revokes the old run's credentials with a 1-second timestamp: a run started in the
    # same second is killed as "Job credential revoked" (slurm's own 2-min BeginTime avoids it)
    time.sleep(3)
    cluster.cmd("scontrol", "update", f"JobId={job}", "StartTime=now")
    state = cluster.wait(job)
    log = out.read_text()
    assert state["JobState"] == "COMPLETED", log[-4000:] + cluster.diagnostics(job)
    assert "USR1: will checkpoint and stop after this step" in log
    assert re.search(rf"preempted \(training exit \d+\): requeueing job {job}", log), log[-4000:]
    assert f"job {job} restart 1:" in log
    # normally step 4 (the signal lands in the pause); a later step if the machine is slow
    stopped = re.search(r": stopped after step (\d+); rerun", log)
    assert stopped and 4 <= int(stopped[1]) < STEPS, log[-4000:]
    assert (run_dir / "checkpoints" / f"step-{int(stopped[1]):08d}").is_dir()
    assert (run_dir / "checkpoints" / f"step-{STEPS:08d}").is_dir()
    _assert_losses(run_dir, reference)
