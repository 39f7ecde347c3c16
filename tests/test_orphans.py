"""Workers die with their parent: SIGKILL of the torchrun agent or of pre-tokenize's main process
leaves no worker running (distlm/lifecycle.py, Linux's parent-death signal).

Each test stops the workers (SIGSTOP) before it kills their parent: a stopped process never
exits by itself, so only the parent-death signal (a SIGKILL, which reaches stopped processes) can
remove it. Without it the workers would stay forever; the bound below is only a generous timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_utils import ROOT, _env
from test_fault_torchrun import Job, args, logged

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")

GONE_WITHIN_S = 30  # SIGKILL lands in milliseconds; generous for a loaded 2-core machine


def children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int(_stat(int(d.name))[1]) == pid:
                found.append(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running or stopped; a zombie (dead, not yet reaped by its new parent) is gone."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def wait_until(what, timeout_s: float, message: str) -> None:
    end = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < end, message()
        time.sleep(0.02)


def stop_then_kill_parent(parent: subprocess.Popen, workers: list[int]) -> None:
    """SIGSTOP every worker, SIGKILL their parent, assert every worker is gone."""
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        wait_until(
            lambda: not any(alive(p) for p in workers),
            GONE_WITHIN_S,
            lambda: (
                f"workers still alive {GONE_WITHIN_S}s after their parent's SIGKILL: "
                f"{[p for p in workers if alive(p)]}"
            ),
        )
    finally:  # never leave a stopped process behind, whatever happened
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_parent_death_signal_reaches_a_stopped_child(tmp_path):
    armed = tmp_path / "armed"
    child = (
        "import os, sys, time; from distlm.lifecycle import die_with_parent;"
        "assert die_with_parent(os.getppid()); open(sys.argv[1], 'w').write(str(os.getpid()));"
        "time.sleep(300)"
    )
    parent_code = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}, "
        f"{str(armed)!r}]); time.sleep(300)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT, env=_env(None))
    try:
        wait_until(armed.exists, 60, lambda: "the child did not arm die_with_parent")
        wait_until(lambda: armed.read_text(), 5, lambda: "empty pid file")
        stop_then_kill_parent(parent, [int(armed.read_text())])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_parent_that_died_before_the_call_kills_the_child_at_once():
    """The race: parent gone before prctl ran (here: a parent pid that is not ours)."""
    code = (
        "from distlm.lifecycle import die_with_parent; import os;"
        "die_with_parent(os.getppid() + 1_000_000); print('survived')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(None), capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout, proc.stderr


def test_torchrun_workers_die_when_the_agent_is_killed(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    job = Job(args(tiny_dataset, run), tmp_path / "job.log")
    try:
        job.wait_for(logged(run, 1))  # both ranks are past init_distributed: armed
        workers = list(job.ranks().values())
        assert len(workers) == 2, job.output()[-3000:]
        stop_then_kill_parent(job.proc, workers)
    finally:
        if job.proc.poll() is None:
            os.killpg(job.proc.pid, signal.SIGKILL)
            job.proc.wait()


def _armed_pool_workers(pid: int) -> list[int]:
    """Children of `pid` that ran init_worker's die_with_parent: it precedes the worker's import
    of sentencepiece, so a child with the library mapped is armed."""
    armed = []
    for child in children(pid):
        try:
            if "sentencepiece" in Path(f"/proc/{child}/maps").read_text():
                armed.append(child)
        except OSError:
            continue
    return armed


def test_pretokenize_workers_die_when_the_main_process_is_killed(tiny_dataset, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # ~8 MB: seconds of encoding, so the job is far from done when both workers are armed
    size, sources = 0, sorted(Path(os.__file__).parent.glob("*.py"))
    for i, src in enumerate(sources * 8):
        size += (corpus / f"{i:04d}.txt").write_bytes(src.read_bytes())
        if size > 8_000_000:
            break
    cmd = [
        sys.executable,
        "-m",
        "data_tools.pretokenize",
        str(corpus),
        "--out",
        str(tmp_path / "d"),
    ]
    cmd += ["--tokenizer", str(tiny_dataset / "tokenizer.model"), "--workers", "2"]
    cmd += ["--unit-mb", "0.01", "--no-progress"]
    main = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(None), stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(
            lambda: len(_armed_pool_workers(main.pid)) == 2 or main.poll() is not None,
            120,
            lambda: "pretokenize's two workers did not start",
        )
        os.kill(main.pid, signal.SIGSTOP)  # it can neither finish nor end its pool now
        workers = _armed_pool_workers(main.pid)
        assert main.poll() is None and len(workers) == 2, "pretokenize ended too soon"
        stop_then_kill_parent(main, workers)
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)
            main.wait()
