"""Token ids against the vocabulary: an id the model cannot embed stops the run, naming the shard
and the document (and, from a batch, the sample), never a bare `IndexError` at step 1.

Three checks, cheapest first:
1. the manifest: each shard's `max_token_id`, recorded when pre-tokenize wrote it, against the
   vocab size, before step 0 (no I/O). Manifests written before this field existed skip it.
2. with `data.verify_checksums=true`: one max over each memory-mapped shard's tokens, before
   step 0 (a vectorised pass, faster than the sha256 done with it).
3. always: one max over each batch's int64 window buffer, in the loader thread before the device
   copy (cost in bench/RESULTS.md, "Token id guard"). Locating the culprit runs only on failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distlm.data.errors import DataError
from distlm.data.manifest import MANIFEST_NAME, Manifest
from distlm.data.shards import open_shard

if TYPE_CHECKING:
    from distlm.data.dataset import SampleSource, SplitData

_WHAT_TO_DO = (
    "the shard is corrupt or was not made with this dataset's tokenizer; "
    "rerun data_tools.pretokenize for it"
)


def check_manifest(split_dir: Path, manifest: Manifest) -> None:
    """Refuse a shard whose recorded largest id is outside the vocabulary (1. above)."""
    vocab = manifest.vocab_size
    for entry in manifest.shards:
        largest = entry.get("max_token_id")
        if largest is not None and largest >= vocab:
            raise DataError(
                f"{split_dir / MANIFEST_NAME}: shard {entry['file']} has max_token_id {largest}, "
                f"outside the vocabulary of {vocab} ids: {_WHAT_TO_DO}"
            )


def scan_split(split: SplitData) -> None:
    """Max over every token of every shard of the split (2. above); DataError naming the first
    out-of-range token's shard and document."""
    vocab = split.manifest.vocab_size
    for entry, values in zip(split.manifest.shards, split.stream.arrays, strict=True):
        if len(values) and int(values.max()) >= vocab:
            position = int(np.argmax(values >= vocab))
            raise _token_error(split, split.path / entry["file"], position, vocab, "")


def check_batch(source: SampleSource, k: int, sample_ids: np.ndarray, windows: np.ndarray) -> None:
    """One reduction over a batch (3. above): windows (n, seq_len + 1) int64 of `sample_ids`."""
    vocab = source.vocab_size
    if int(windows.max()) < vocab:
        return
    row, column = np.argwhere(windows >= vocab)[0].tolist()
    sample = int(sample_ids[row])
    d, window = source.locate(sample)
    split = source.splits[d]
    token = window * source.seq_len + column  # position in the split's token stream
    shard = int(np.searchsorted(split.stream.starts, token, side="right")) - 1
    path = split.path / split.manifest.shards[shard]["file"]
    position = token - int(split.stream.starts[shard])
    where = f", read by sample {sample} (window {window}) of global batch {k}"
    raise _token_error(split, path, position, vocab, where)


def _token_error(split: SplitData, path: Path, position: int, vocab: int, where: str) -> DataError:
    """The message for token `position` of shard `path`: its id, its document, what to do."""
    values, offsets = open_shard(path, split.manifest.np_dtype)
    document = int(np.searchsorted(offsets, position, side="right")) - 1
    return DataError(
        f"{path}: token id {int(values[position])} is outside the vocabulary of "
        f"{vocab} ids, at token {position - int(offsets[document])} of document "
        f"{document}{where}: {_WHAT_TO_DO}"
    )
