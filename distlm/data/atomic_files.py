"""Write files so that a reader never sees a half-written one: temp name, fsync, rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from distlm.data.errors import DataError

TEMP_MARK = ".tmp-"  # every temporary file name contains this; they are removed on restart


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX: the directory entry must be synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it to `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TEMP_MARK}{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def remove_temp_files(directory: Path) -> None:
    """Drop leftovers of a killed writer: they were never renamed, so nothing refers to them."""
    if directory.is_dir():
        for p in directory.iterdir():
            if TEMP_MARK in p.name:
                p.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, or DataError naming the file and what it should have been."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected the {what}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON {what} ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object ({what})")
    return obj
