"""Arrow IPC shards: one row per document, one `tokens: list<uint16|uint32>` column.

Each shard is written as ONE record batch, so a memory-mapped shard gives zero-copy numpy views of
all its tokens (`.values`) and document boundaries (`.offsets`); several batches would make a
ChunkedArray, which is not zero-copy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from distlm.data import atomic_files
from distlm.data.errors import DataError

MAX_SHARD_TOKENS = (1 << 31) - 1  # list<> offsets are int32


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def write_shard(path: Path, tokens: np.ndarray, lengths: np.ndarray) -> dict:
    """Write the documents (tokens concatenated, `lengths` per document) atomically.

    Returns the manifest entry: file, tokens, documents, bytes, sha256, max_token_id (checked
    against the model's vocab before step 0).
    """
    if len(tokens) > MAX_SHARD_TOKENS:
        raise DataError(f"{path}: {len(tokens)} tokens exceed the {MAX_SHARD_TOKENS} of one shard")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens))
    batch = pa.record_batch([column], names=["tokens"])
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue()
    atomic_files.write_bytes(path, data)
    return {
        "file": path.name,
        "tokens": int(len(tokens)),
        "documents": int(len(lengths)),
        "bytes": data.size,
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_token_id": int(tokens.max()) if len(tokens) else -1,
    }


def open_shard(path: Path, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a shard: (tokens, offsets) as zero-copy numpy views; DataError if unreadable."""
    try:
        reader = ipc.open_file(pa.memory_map(os.fspath(path)))
        if reader.num_record_batches != 1:
            raise DataError(f"{path}: {reader.num_record_batches} record batches, expected 1")
        column = reader.get_batch(0).column(0)
        values = column.values.to_numpy(zero_copy_only=True)
        offsets = column.offsets.to_numpy(zero_copy_only=True)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Arrow shard ({e}); rerun pretokenize") from None
    if values.dtype != dtype:
        raise DataError(f"{path}: tokens are {values.dtype}, the manifest says {dtype}")
    return values, offsets


def check_shard(path: Path, entry: dict, verify_checksum: bool) -> None:
    """Stop on a missing, truncated or (with verify_checksum) altered shard, naming it."""
    if not path.is_file():
        raise DataError(f"{path}: shard listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(
            f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced?)"
        )
    if verify_checksum and atomic_files.sha256_file(path) != entry["sha256"]:
        raise DataError(f"{path}: sha256 does not match the manifest (corrupted or replaced)")
