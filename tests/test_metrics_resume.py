"""After a crash and resume, metrics.jsonl and tensorboard hold one row per step: the rows of the
steps after the resumed checkpoint come from the run that produced the final model.

The crash is real: `python -m distlm train` is killed with SIGKILL after logging steps 5 and 6
(the last checkpoint is step 4); the same command then resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from dist_utils import ROOT, _env
from test_fault_torchrun import STEPS, TINY
from test_orphans import wait_until

from distlm.config_loader import load_config
from distlm.parallel import destroy_distributed
from distlm.train.trainer import train


def rows(run: Path) -> list[dict]:
    """The train rows of metrics.jsonl (validation rows carry `val_*` keys)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def tensorboard_losses(run: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_resumed_run_keeps_one_metrics_row_per_step(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    argv = [*TINY, f"data.path={tiny_dataset}", f"logging.run_dir={run}"]
    argv += ["logging.tensorboard=true"]
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        killed = subprocess.Popen(
            [sys.executable, "-m", "distlm", "train", *argv],
            cwd=ROOT,
            env=_env({"DISTLM_DEBUG_PAUSE": "step@6=120"}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:  # the pause follows step 6's metrics (jsonl and tensorboard): kill -9 inside it
        wait_until(
            lambda: "debug pause at step@6" in log.read_text(),
            180,
            lambda: f"step 6 never reached (exit {killed.poll()}):\n{log.read_text()[-3000:]}",
        )
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    before = rows(run)
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5, 6]
    assert len(tensorboard_losses(run)) == 6  # the killed run's events are on disk too

    saved = dict(os.environ)
    try:
        result = train(load_config(argv))  # the same command again: resumes from step 4
    finally:
        destroy_distributed()
        os.environ.clear()
        os.environ.update(saved)

    after = rows(run)
    assert [r["step"] for r in after] == list(range(1, STEPS + 1))
    assert after[:4] == before[:4]  # up to the checkpoint: the killed run's rows, untouched
    assert [r["loss"] for r in after[4:]] == [round(result.losses[s], 6) for s in range(5, 13)]
    board = tensorboard_losses(run)
    assert [s for s, _ in board] == list(range(1, STEPS + 1))
    assert all(abs(v - r["loss"]) < 1e-5 for (_, v), r in zip(board, after, strict=True))


def test_rewind_purges_a_killed_runs_events_made_in_the_same_second_by_a_larger_pid(tmp_path):
    """The race behind an intermittent failure of the test above: TensorBoard reads event files
    in name order (creation second, host, pid), so a resumed run's file made in the killed run's
    second by a smaller pid was read first and its purge did not apply."""
    from torch.utils.tensorboard import SummaryWriter

    from distlm.train.metrics import MetricsLogger

    board = tmp_path / "tensorboard"
    killed = SummaryWriter(str(board))
    for step in range(1, 7):
        killed.add_scalar("train/loss", float(step), step)
    killed.close()
    (old,) = board.glob("events.out.tfevents.*")
    name = old.name.split(".")
    name[5] = "99999999"  # the killed run's pid, larger than this process's
    old.rename(board / ".".join(name))

    log = MetricsLogger(load_config([f"logging.run_dir={tmp_path}"]), tmp_path, True, 1)
    log.rewind(4)
    for step in range(5, 9):
        log.log(step, {"loss": 100.0 + step})
    log.close()
    assert tensorboard_losses(tmp_path) == [(s, float(s)) for s in range(1, 5)] + [
        (s, 100.0 + s) for s in range(5, 9)
    ]
