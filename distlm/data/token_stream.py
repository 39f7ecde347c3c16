"""All shards of one split as one virtual token stream, memory-mapped, zero-copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distlm.data.errors import DataError
from distlm.data.manifest import Manifest
from distlm.data.shards import check_shard, open_shard


class TokenStream:
    """Concatenation of the shards' token arrays, addressed through cumulative shard offsets."""

    def __init__(self, split_dir: Path, manifest: Manifest, verify_checksums: bool = False) -> None:
        self.arrays: list[np.ndarray] = []
        for entry in manifest.shards:
            path = split_dir / entry["file"]
            check_shard(path, entry, verify_checksums)
            values, _ = open_shard(path, manifest.np_dtype)
            if len(values) != entry["tokens"]:
                raise DataError(
                    f"{path}: {len(values)} tokens, the manifest says {entry['tokens']}"
                )
            self.arrays.append(values)
        self.starts = np.zeros(
            len(self.arrays) + 1, dtype=np.int64
        )  # shard i: [starts[i], starts[i + 1])
        np.cumsum([len(a) for a in self.arrays], out=self.starts[1:])
        self.total_tokens = int(self.starts[-1])

    def gather(self, starts: np.ndarray, out: np.ndarray) -> None:
        """out[j] = tokens[starts[j] : starts[j] + out.shape[1]]. A window that crosses a shard
        boundary is read in pieces."""
        length = out.shape[1]
        starts = np.asarray(starts, dtype=np.int64)
        shard_ids = np.searchsorted(self.starts, starts, side="right") - 1
        offsets = (starts - self.starts[shard_ids]).tolist()
        ends = (self.starts[shard_ids + 1] - starts).tolist()  # tokens left in the shard
        arrays = self.arrays
        for j, shard in enumerate(shard_ids.tolist()):
            if ends[j] >= length:  # the common case: one slice, one memcpy
                out[j] = arrays[shard][offsets[j] : offsets[j] + length]
            else:
                self._gather_across(int(starts[j]), out[j])

    def _gather_across(self, start: int, row: np.ndarray) -> None:
        filled = 0
        while filled < len(row):
            shard = int(np.searchsorted(self.starts, start + filled, side="right")) - 1
            offset = start + filled - int(self.starts[shard])
            piece = self.arrays[shard][offset : offset + len(row) - filled]
            row[filled : filled + len(piece)] = piece
            filled += len(piece)
