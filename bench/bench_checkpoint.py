"""Checkpoint costs for model=124m on CPU (DDP strategy, world size 1): what checksums add to a
save and to a load, and how long the training loop stalls per save, synchronous vs asynchronous.

    .venv/bin/python bench/bench_checkpoint.py                  # model=124m, 5 paired rounds
    .venv/bin/python bench/bench_checkpoint.py model=tiny --rounds 3

First the candidates for the checksum: GB/s of sha256, blake2b, crc32 (zlib) and xxh3_64 over
256 MB in memory on one core, against this disk's write + fsync GB/s (the hash must keep up).

Then each figure is the wall time of one `CheckpointManager` call on a real model + AdamW state
(124.7 M params: 1.5 GB of fp32 weights and moments), A and B alternated by bench/paired.py.
- save: files.json with sizes only (the format before checksums) vs sizes + xxh3-64 checksums;
- load: checkpoint.verify=false vs true (the page cache holds the files in both: just written);
- the same save and load pairs in CPU seconds of this process (robust to other jobs' load);
- stall: the time `save()` keeps the loop, checkpoint.async_save=false vs true. Async, the loop
  waits only for the state copy; the write and commit run in the background (waited for between
  rounds, outside the timing, as training steps would overlap them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import torch
import xxhash
from paired import cpu_timed, paired, timed

import distlm.checkpoint.manager as manager
from distlm.checkpoint import CheckpointManager
from distlm.checkpoint.integrity import FILES
from distlm.config import resolve
from distlm.config_loader import load_config
from distlm.model import build_model
from distlm.parallel import build_strategy, init_distributed, parallelize


def sizes_only(ckpt: Path, group=None) -> None:
    """files.json as before checksums: {file: bytes}."""
    files = [p for p in sorted(ckpt.rglob("*")) if p.is_file()]
    sizes = {str(p.relative_to(ckpt)): p.stat().st_size for p in files}
    (ckpt / FILES).write_text(json.dumps(sizes, indent=1))


def hash_throughputs(megabytes: int = 256) -> None:
    """GB/s of each checksum candidate (8 MiB chunks, in memory) and of write + fsync here."""
    data = os.urandom(megabytes << 20)
    view, chunk = memoryview(data), 8 << 20

    def stream(update) -> float:
        start = time.perf_counter()
        for i in range(0, len(data), chunk):
            update(view[i : i + chunk])
        return len(data) / (time.perf_counter() - start) / 1e9

    crc = [0]
    figures = {
        "sha256": stream(hashlib.sha256().update),
        "blake2b": stream(hashlib.blake2b().update),
        "crc32 (zlib)": stream(lambda b: crc.__setitem__(0, zlib.crc32(b, crc[0]))),
        "xxh3_64": stream(xxhash.xxh3_64().update),
    }
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as f:
        start = time.perf_counter()
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        figures["disk write + fsync"] = len(data) / (time.perf_counter() - start) / 1e9
    for name, gbps in figures.items():
        print(f"{name:>20}: {gbps:6.2f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    opts, overrides = parser.parse_known_args()
    hash_throughputs()
    root = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    cfg = load_config(["model=124m", "train.device=cpu", f"logging.run_dir={root}", *overrides])
    cfg.checkpoint.keep_last = 2
    env = init_distributed("cpu")
    strategy = build_strategy(cfg, resolve(cfg, 1), env)
    model = parallelize(build_model(cfg.model, env.device), cfg, strategy)
    optimizer = strategy.build_optimizer()
    for p in model.parameters():  # one step on zero grads: AdamW's moments exist, as in training
        p.grad = torch.zeros_like(p)
    optimizer.step()
    params = sum(p.numel() for p in model.parameters())
    ckpt = CheckpointManager(cfg, root, rank=0)
    step = iter(range(1, 10_000))
    record = manager.record_files

    def save(checksums: bool, async_save: bool = False, clock=timed):
        manager.record_files = record if checksums else sizes_only
        cfg.checkpoint.async_save = async_save
        try:
            return clock(lambda: ckpt.save(strategy, next(step), {"loader": {}}))
        finally:
            ckpt.wait()  # async: the write finishes outside the timing (training overlaps it)
            manager.record_files = record

    def load(verify: bool, clock=timed):
        cfg.checkpoint.verify = verify
        return clock(lambda: ckpt.load(strategy, ckpt.latest()))

    save(True)
    size = sum(p.stat().st_size for p in ckpt.latest().rglob("*") if p.is_file())
    print(f"model {cfg.model.name}: {params:,} params, checkpoint {size / 1e9:.2f} GB", flush=True)
    rounds = opts.rounds
    results = [
        paired(
            "save sizes-only", lambda: save(False), "save checksummed", lambda: save(True), rounds
        ),
        paired(
            "load verify=false", lambda: load(False), "load verify=true", lambda: load(True), rounds
        ),
        paired("stall sync", lambda: save(True), "stall async", lambda: save(True, True), rounds),
        # CPU time of this process: what the hash costs, whatever else loads the machine
        paired(
            "save sizes-only (CPU s)",
            lambda: save(False, clock=cpu_timed),
            "save checksummed (CPU s)",
            lambda: save(True, clock=cpu_timed),
            rounds,
        ),
        paired(
            "load verify=false (CPU s)",
            lambda: load(False, clock=cpu_timed),
            "load verify=true (CPU s)",
            lambda: load(True, clock=cpu_timed),
            rounds,
        ),
    ]
    shutil.rmtree(root)
    print()
    for r in results:  # paired's ratio is A time / B time (>1: B faster)
        print(r.line("s"))
        lo, mid, hi = 1 / r.max, 1 / r.median, 1 / r.min
        print(f"  time B / time A: median {mid:.3f} (min {lo:.3f}, max {hi:.3f}, n={r.n})")


if __name__ == "__main__":
    main()
