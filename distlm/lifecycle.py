"""Child processes die with their parent: no worker outlives a killed launcher.

A torchrun worker whose agent was killed with SIGKILL, or a pre-tokenize worker whose main
process was, would otherwise be adopted by init and keep running (training on, holding a GPU,
writing). `die_with_parent()` asks Linux to send this process SIGKILL when its parent exits
(`prctl(PR_SET_PDEATHSIG)`, see prctl(2)). SIGKILL, not SIGTERM: a worker whose launcher is
gone cannot complete a checkpoint with peers that are dying too, and checkpoints are atomic, so
nothing half-written is ever read.

Race: if the parent died before `prctl` ran, no signal will ever come. The caller passes the
parent's pid when it knows it (multiprocessing does), and the check afterwards exits at once if
the parent is already gone; without it, being adopted by pid 1 is taken as the sign. Linux only;
elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Arrange SIGKILL for this process when its parent exits; True if it is armed.

    `parent_pid`: the pid the parent had (the check for a parent that died before the call);
    None: only "adopted by init" counts as a dead parent.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    # the parent may have exited between this process's start and the prctl: no signal comes
    ppid = os.getppid()
    if ppid == 1 or (parent_pid is not None and ppid != parent_pid):
        os.kill(os.getpid(), signal.SIGKILL)
    return True
