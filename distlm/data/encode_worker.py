"""What a pre-tokenization worker process does with one work unit.

Read its pieces into documents, tokenize them in batches, append eos, and assign each document to
train or validation by a hash of its text (so the split does not depend on order or workers, and
exact duplicates always land in the same split).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from distlm.data.readers import ReadOptions, SourceStats, iter_piece_texts, normalize
from distlm.data.work_units import WorkUnit, read_piece

ENCODE_BATCH_BYTES = 1 << 20  # texts handed to sentencepiece at once (batch encode is ~2x faster)
_SPLIT_KEY = b"distlm-split-v1"


@dataclass
class UnitResult:
    index: int
    tokens: np.ndarray  # all documents' tokens, eos appended to each, token dtype
    lengths: np.ndarray  # (documents,) int64, eos included
    is_val: np.ndarray  # (documents,) bool
    stats: dict[int, list[int]] = field(default_factory=dict)  # source -> SourceStats values


@dataclass(frozen=True)
class EncodeSettings:
    model_proto: bytes
    read: ReadOptions
    val_fraction: float
    dtype: str


_state: dict = {}


def init_worker(settings: EncodeSettings) -> None:
    """Pool initializer: load the tokenizer once per process."""
    import multiprocessing as mp

    from distlm.lifecycle import die_with_parent

    if (parent := mp.parent_process()) is not None:  # a pool worker, not the inline path
        die_with_parent(parent.pid)
    import sentencepiece as spm  # after arming: tests/test_orphans.py reads it as the sign

    _state["settings"] = settings
    _state["sp"] = spm.SentencePieceProcessor(model_proto=settings.model_proto)


def is_validation(data: bytes, val_fraction: float) -> bool:
    digest = hashlib.blake2b(data, digest_size=8, key=_SPLIT_KEY).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


def encode_unit(unit: WorkUnit) -> UnitResult:
    settings: EncodeSettings = _state["settings"]
    sp = _state["sp"]
    eos = np.array([sp.eos_id()], dtype=np.int32)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    is_val: list[bool] = []
    stats: dict[int, list[int]] = {}
    batch: list[str] = []
    batch_bytes = 0

    def encode_batch() -> None:
        for ids in sp.encode_as_numpy(batch, num_threads=1):
            parts.extend((ids, eos))
            lengths.append(len(ids) + 1)
        batch.clear()

    for piece in map(read_piece, unit.pieces):
        counts = SourceStats(stats.get(piece.source))
        first_doc = len(lengths) + len(batch)
        for text in iter_piece_texts(piece, settings.read, counts):
            doc = normalize(text, counts)
            if doc is None:
                continue
            batch.append(doc[0])
            batch_bytes += len(doc[1])
            counts.bump("text_bytes", len(doc[1]))
            is_val.append(is_validation(doc[1], settings.val_fraction))
            if batch_bytes >= ENCODE_BATCH_BYTES:
                encode_batch()
                batch_bytes = 0
        encode_batch()
        counts.bump("documents", len(lengths) - first_doc)
        counts.bump("tokens", sum(lengths[first_doc:]))
        stats[piece.source] = counts.values
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return UnitResult(
        unit.index,
        tokens.astype(settings.dtype),
        np.array(lengths, dtype=np.int64),
        np.array(is_val, dtype=bool),
        stats,
    )
