"""Asynchronous checkpoints (checkpoint.async_save): the commit that follows a background write.

The training thread only copies the state (torch's `async_save` stages it before returning) and
goes on training; torch's writer thread writes and fsyncs this rank's files. A commit thread of
this module then waits for that write, meets the other ranks' commit threads on the checkpoint
group (a barrier: every rank's files are on disk) and runs the same commit as a synchronous save
(files.json, fsync, rename to `step-N/`, then `latest`), its collectives on that group too: the
default group belongs to the training thread, and two threads issuing collectives on one group
mismatch. A kill at any point before the rename leaves `step-N.tmp/` unread and `latest` naming
the previous checkpoint. One save is in flight at most: the next save, a load and the end of
training wait for it (`CheckpointManager.wait`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch.distributed as dist

from distlm.fault_injection import debug_pause


def background_commit(
    commit: Callable[[Path, Path, object], None], writing: Future, tmp: Path, final: Path, step: int
) -> Future:
    """Run `commit(tmp, final, group)` in a thread once `writing` (this rank's files) is done
    and every rank's is; the Future raises whatever failed."""
    from distlm.parallel.dcp_state import checkpoint_group  # the group async_save writes with

    group = checkpoint_group()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-commit")
    done = pool.submit(_finish, commit, writing, tmp, final, step, group)
    pool.shutdown(wait=False)  # its thread ends with this one task
    return done


def _finish(commit, writing: Future, tmp: Path, final: Path, step: int, group) -> None:
    writing.result()  # this rank's files are written and fsynced
    debug_pause("commit", step)  # tests: a window to kill in, the write done but not committed
    if dist.is_initialized():
        dist.barrier(group=group)  # every rank's files are
    commit(tmp, final, group)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"checkpoint {final} committed (written in the background)", flush=True)
