"""Accumulate one split's documents and cut them into shards of a target size in tokens.

A shard is cut at the first document boundary at or past the target, so shard contents depend only
on the document sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distlm.data.shards import shard_name, write_shard


class SplitWriter:
    def __init__(self, name: str, directory: Path, shard_tokens: int, shards: list[dict]) -> None:
        self.name = name
        self.directory = directory
        self.shard_tokens = shard_tokens
        self.shards = list(shards)  # manifest entries of the shards written so far
        self._tokens: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self.pending_tokens = 0
        self.pending_documents = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> int:
        """Buffer documents; write every full shard; return the number of shards written."""
        if len(lengths):
            self._tokens.append(tokens)
            self._lengths.append(lengths)
            self.pending_tokens += len(tokens)
            self.pending_documents += len(lengths)
        written = 0
        while self.pending_tokens >= self.shard_tokens:
            self._write(self.shard_tokens)
            written += 1
        return written

    def flush(self) -> int:
        """Write whatever is buffered as one (smaller) shard."""
        if not self.pending_documents:
            return 0
        self._write(self.pending_tokens)
        return 1

    def _write(self, min_tokens: int) -> None:
        tokens = np.concatenate(self._tokens)
        lengths = np.concatenate(self._lengths)
        ends = np.cumsum(lengths)
        n_docs = int(np.searchsorted(ends, min_tokens)) + 1  # first boundary >= min_tokens
        n_tokens = int(ends[n_docs - 1])
        entry = write_shard(
            self.directory / shard_name(len(self.shards)), tokens[:n_tokens], lengths[:n_docs]
        )
        self.shards.append(entry)
        self._tokens = [tokens[n_tokens:]] if n_docs < len(lengths) else []
        self._lengths = [lengths[n_docs:]] if n_docs < len(lengths) else []
        self.pending_tokens -= n_tokens
        self.pending_documents -= n_docs
