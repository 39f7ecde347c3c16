"""files.json: the size and checksum of every file of a checkpoint, recorded when it is written
and verified before anything is loaded.

    {"format": 2, "hash": "xxh3_64", "files": {"state/__0_0.distcp": {"bytes": 1234,
                                                 "xxh3_64": "9f0c..."}, ...}}

A flipped byte that keeps the size is caught by the checksum; a truncated or missing file by the
size, before any file is hashed. The hash is xxHash's XXH3-64: not cryptographic (it guards against
disk, copy and transfer corruption, not against an attacker), and faster than storage: 6.6 GB/s
on one core of the loaded 2-core CI VM against 0.74 for sha256 and 0.38 for blake2b, while the
same VM writes + fsyncs at 0.2-1.2 GB/s (`bench/bench_checkpoint.py`, bench/RESULTS.md,
"Checkpoint checksums and asynchronous saves"). Every rank hashes
its share of the files (the page cache still holds what was just written), rank 0 writes the
listing; on load every rank checks its share and all ranks raise the same error.

Checkpoints of earlier versions hold `{"<file>": <bytes>, ...}` (sizes only) and still load.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
import xxhash

HASH = "xxh3_64"
FILES = "files.json"
FORMAT = 2


def file_digest(path: Path) -> str:
    """XXH3-64 of a file's bytes, as 16 hex digits.

    Hashed through a memory map: no copy into a buffer (bench/RESULTS.md: reading through
    `readinto` made verifying cost 31 % of a 124m load's wall time)."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:  # mmap refuses an empty file
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                h.update(mapped)
    return h.hexdigest()


def _rank_world(group: Any) -> tuple[int, int]:
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather(obj: Any, group: Any) -> list[Any]:
    """Every rank's `obj` on every rank (a collective over `group`)."""
    if _rank_world(group)[1] == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _listing(ckpt: Path, group: Any) -> list[str]:
    """Rank 0's list of the checkpoint's files, the same on every rank."""
    names = [str(p.relative_to(ckpt)) for p in sorted(ckpt.rglob("*")) if p.is_file()]
    names = [n for n in names if n != FILES]
    if _rank_world(group)[1] == 1:
        return names
    box = [names]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group else 0, group=group)
    return box[0]


def record_files(ckpt: Path, group: Any = None) -> None:
    """Write `ckpt/files.json` (a collective over `group`: every rank hashes its share)."""
    rank, world = _rank_world(group)
    names = _listing(ckpt, group)
    mine = {n: file_digest(ckpt / n) for n in names[rank::world]}
    if rank == 0:
        digests = {k: v for part in _gather(mine, group) for k, v in part.items()}
        files = {n: {"bytes": (ckpt / n).stat().st_size, HASH: digests[n]} for n in names}
        listing = {"format": FORMAT, "hash": HASH, "files": files}
        (ckpt / FILES).write_text(json.dumps(listing, indent=1))
    else:
        _gather(mine, group)


def read_listing(ckpt: Path) -> dict[str, dict[str, Any]] | None:
    """{file: {"bytes": n[, "xxh3_64": hex]}} from files.json, None if the checkpoint has none.

    Raises OSError / ValueError for an unreadable or malformed file."""
    path = ckpt / FILES
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if isinstance(data.get("files"), dict):  # format 2
        if data.get("hash") != HASH:
            raise ValueError(f"checksums of an unknown kind {data.get('hash')!r}")
        return data["files"]
    return {name: {"bytes": size} for name, size in data.items()}  # format 1: sizes only


def first_size_mismatch(ckpt: Path, files: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with the first missing or resized file, None if all sizes match."""
    for name, entry in files.items():
        f = ckpt / name
        actual = f.stat().st_size if f.exists() else None
        if actual != entry["bytes"]:
            what = "missing" if actual is None else f"{actual} bytes, expected {entry['bytes']}"
            return f"{f}: {what} (truncated?)" if actual is not None else f"{f}: {what}"
    return None


def first_checksum_mismatch(
    ckpt: Path, files: dict[str, dict[str, Any]], group: Any = None
) -> str | None:
    """The first file (in files.json order) whose checksum differs, the same on every rank (a
    collective over `group`: every rank hashes its share); None if all match or none recorded."""
    rank, world = _rank_world(group)
    names = [n for n in files if HASH in files[n]]
    bad = []
    for name in names[rank::world]:
        actual = file_digest(ckpt / name)
        if actual != files[name][HASH]:
            bad.append(
                f"{ckpt / name}: checksum mismatch ({HASH} {actual}, files.json recorded "
                f"{files[name][HASH]} when it was written; same size, so the bytes changed on "
                f"disk or in a copy)"
            )
    everyone = [msg for part in _gather(bad, group) for msg in part]
    order = {str(ckpt / n): i for i, n in enumerate(names)}
    return min(everyone, key=lambda m: order[m.split(": checksum", 1)[0]], default=None)
