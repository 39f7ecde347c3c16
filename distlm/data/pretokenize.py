"""Parallel pre-tokenization of corpora into sharded Arrow datasets, resumable and deterministic.

Layout written under `out_dir`: tokenizer.model + tokenizer_card.json (copies), and per split
(`train/`, and `val/` when val_fraction > 0) shard-00000.arrow ... plus manifest.json, the train
manifest last. Until then a journal (`.pretokenize-journal.json`) records, after every unit in
which a train shard was completed, the shards written and where to restart: rerunning the same
command after a crash (even kill -9) continues from there and produces the same bytes.

Determinism: inputs are cut into work units independent of the worker count; the pool's results
are consumed in unit order; the validation split and the shard cuts depend only on the document
sequence. At every checkpoint the validation buffer is flushed too, so a restart never needs
state that is not on disk.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distlm.data import atomic_files
from distlm.data.encode_worker import EncodeSettings, UnitResult, encode_unit, init_worker
from distlm.data.errors import DataError
from distlm.data.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TOKENIZER_CARD_NAME,
    TOKENIZER_NAME,
    Manifest,
    read_manifest,
    write_manifest,
)
from distlm.data.pretokenize_report import Progress, format_summary
from distlm.data.readers import InputFile, ReadOptions, SourceStats
from distlm.data.shards import MAX_SHARD_TOKENS, check_shard, token_dtype
from distlm.data.split_writer import SplitWriter
from distlm.data.tokenizer import Tokenizer, find_card
from distlm.data.work_units import WorkUnit, iter_units

JOURNAL_NAME = ".pretokenize-journal.json"


@dataclass
class PretokenizeOptions:
    tokenizer: str  # path of the sentencepiece .model
    inputs: list[InputFile]
    out_dir: str
    read: ReadOptions = field(default_factory=ReadOptions)
    val_fraction: float = 0.01  # share of documents (by hash) in the val split; 0 = none
    shard_tokens: int = 100_000_000  # target shard size; shards end at a document boundary
    workers: int = 0  # processes; 0 = all cores; 1 = in this process
    unit_bytes: int = 4 << 20  # text per work unit (the resume granularity)
    overwrite: bool = False  # replace a complete dataset made with other arguments
    progress: bool = True  # tqdm bar on stderr
    created_by: str = ""  # the command line, recorded in the manifests


def _fingerprint(opts: PretokenizeOptions, tok: Tokenizer) -> str:
    """Hash of everything that decides the output bytes (not the worker count)."""
    key = {
        "format_version": FORMAT_VERSION,
        "tokenizer_sha256": tok.sha256,
        "inputs": [i.key() for i in opts.inputs],
        "read": asdict(opts.read),
        "val_fraction": opts.val_fraction,
        "shard_tokens": opts.shard_tokens,
        "unit_bytes": opts.unit_bytes,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _check_options(opts: PretokenizeOptions) -> None:
    if not 0.0 <= opts.val_fraction < 1.0:
        raise DataError(f"--val-fraction {opts.val_fraction} must be in [0, 1)")
    if not 0 < opts.shard_tokens <= MAX_SHARD_TOKENS:
        raise DataError(f"--shard-tokens {opts.shard_tokens} must be in [1, {MAX_SHARD_TOKENS}]")
    if opts.workers < 0:
        raise DataError(f"--workers {opts.workers} must be >= 0 (0 = all cores)")


class _Journal:
    """Where to restart: unit index, documents of that unit already in shards, shards so far."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.restart_unit = 0
        self.skip: dict[str, int] = {}
        self.shards: dict[str, list[dict]] = {}
        self.sources: list[list[int]] = []

    def load(self) -> bool:
        if not self.path.is_file():
            return False
        state = atomic_files.read_json(self.path, "pre-tokenization journal")
        if state.get("fingerprint") != self.fingerprint:
            return False
        self.restart_unit, self.skip = state["restart_unit"], state["skip"]
        self.shards, self.sources = state["shards"], state["sources"]
        return True

    def save(self) -> None:
        atomic_files.write_json(self.path, self.__dict__ | {"path": str(self.path)})


def pretokenize(opts: PretokenizeOptions) -> dict:
    """Tokenize `opts.inputs` into `opts.out_dir`; resume or no-op when already (partly) done.

    Returns the run summary (also printed as a table).
    """
    _check_options(opts)
    tok = Tokenizer(opts.tokenizer)
    fingerprint = _fingerprint(opts, tok)
    out = Path(opts.out_dir)
    splits = ["train", "val"] if opts.val_fraction > 0 else ["train"]
    if (out / "train" / MANIFEST_NAME).is_file():
        manifest = read_manifest(out / "train")
        if manifest.fingerprint == fingerprint:
            summary = {"status": "already complete", "out_dir": str(out), "splits": {}}
            for split in splits:
                m = read_manifest(out / split)
                summary["splits"][split] = _split_summary(m.shards)
            return summary
        if not opts.overwrite:
            raise DataError(
                f"{out}: already holds a complete dataset made from other inputs, tokenizer or "
                "options; pass --overwrite to replace it, or choose another --out"
            )
    atomic_files.remove_temp_files(out)  # a killed run's half-written journal / tokenizer copy
    journal = _Journal(out / JOURNAL_NAME, fingerprint)
    if not journal.load():
        _clear_dataset(out)
    for split in splits:  # split folders appear with their first shard: none left empty
        atomic_files.remove_temp_files(out / split)
        for entry in journal.shards.get(split, []):
            check_shard(out / split / entry["file"], entry, verify_checksum=True)
    return _run(opts, tok, fingerprint, journal, splits)


def _clear_dataset(out: Path) -> None:
    """Start over: manifests first (so nothing looks complete), then shards and the journal."""
    for split_dir in (p for p in out.glob("*") if p.is_dir()):
        (split_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for shard in split_dir.glob("shard-*.arrow"):
            shard.unlink()
        if split_dir.name in ("train", "val") and not any(split_dir.iterdir()):
            split_dir.rmdir()  # so that a run failing from here on leaves no empty split folder
    (out / JOURNAL_NAME).unlink(missing_ok=True)


def _run(
    opts: PretokenizeOptions,
    tok: Tokenizer,
    fingerprint: str,
    journal: _Journal,
    splits: list[str],
) -> dict:
    out = Path(opts.out_dir)
    dtype = token_dtype(tok.vocab_size)
    writers = {
        s: SplitWriter(s, out / s, opts.shard_tokens, journal.shards.get(s, [])) for s in splits
    }
    sources = [SourceStats(v) for v in journal.sources] or [SourceStats() for _ in opts.inputs]
    settings = EncodeSettings(tok.proto, opts.read, opts.val_fraction, dtype.name)
    units = iter_units(opts.inputs, opts.read, opts.unit_bytes, read_txt=False)  # workers read
    progress = Progress(sum(i.bytes for i in opts.inputs), enabled=opts.progress)
    for result, unit in _map_ordered(units, settings, opts.workers, journal.restart_unit, progress):
        skip = journal.skip if unit.index == journal.restart_unit else {}
        docs_in_unit = _add_to_splits(result, writers, skip)
        if docs_in_unit["train_shards_written"]:
            for split in splits[1:]:
                writers[split].flush()
            journal.restart_unit = unit.index
            journal.skip = {s: docs_in_unit[s] - writers[s].pending_documents for s in splits}
            journal.shards = {s: writers[s].shards for s in splits}
            journal.sources = [s.values for s in sources]  # units before this one
            journal.save()
        for source, values in result.stats.items():
            sources[source].add(SourceStats(values))
        progress.update(unit.disk_bytes, result)
    progress.close()
    for writer in writers.values():
        writer.flush()
    if not any(w.shards for w in writers.values()):
        raise DataError(
            f"no documents found in {len(opts.inputs)} input file(s) "
            f"({_first_paths(opts.inputs)}); check --text-field / --txt-mode"
        )
    _finish(opts, tok, fingerprint, writers, sources, dtype)
    summary = {
        "status": "done",
        "out_dir": str(out),
        "elapsed_s": progress.elapsed(),
        "sources": [
            {"path": i.path, "bytes": i.bytes} | s.as_dict()
            for i, s in zip(opts.inputs, sources, strict=True)
        ],
        "splits": {s: _split_summary(w.shards) for s, w in writers.items()},
    }
    return summary


def _add_to_splits(
    result: UnitResult, writers: dict[str, SplitWriter], skip: dict[str, int]
) -> dict[str, int]:
    """Hand each split its documents of this unit, minus the first `skip[split]` (already in
    shards before a restart). Returns the documents per split and the train shards written."""
    counts = {}
    for split, writer in writers.items():
        mask = result.is_val if split == "val" else ~result.is_val
        counts[split] = int(mask.sum())
        if skip.get(split):
            mask = mask & (np.cumsum(mask) > skip[split])
        written = writer.add(result.tokens[np.repeat(mask, result.lengths)], result.lengths[mask])
        counts[f"{split}_shards_written"] = written
    return counts


def _first_paths(inputs: list[InputFile], n: int = 3) -> str:
    return ", ".join(i.path for i in inputs[:n]) + (", ..." if len(inputs) > n else "")


def _split_summary(shards: list[dict]) -> dict:
    return {
        "shards": len(shards),
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
    }


def _finish(
    opts: PretokenizeOptions,
    tok: Tokenizer,
    fingerprint: str,
    writers: dict[str, SplitWriter],
    sources: list[SourceStats],
    dtype: np.dtype,
) -> None:
    """Tokenizer copies, then manifests (train last), then drop the journal."""
    out = Path(opts.out_dir)
    if Path(opts.tokenizer).resolve() != (out / TOKENIZER_NAME).resolve():
        atomic_files.copy_file(opts.tokenizer, out / TOKENIZER_NAME)
        if (card := find_card(opts.tokenizer)) is not None:
            atomic_files.copy_file(card, out / TOKENIZER_CARD_NAME)
    tokenizer = {
        "path": f"../{TOKENIZER_NAME}",
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "unk_id": tok.unk_id,
    }
    source_rows = [
        {"path": i.path, "format": i.fmt, "bytes": i.bytes} | s.as_dict()
        for i, s in zip(opts.inputs, sources, strict=True)
    ]
    for split in sorted(writers, key=lambda s: s == "train"):
        manifest = Manifest(
            split=split,
            tokenizer=tokenizer,
            dtype=dtype.name,
            shards=writers[split].shards,
            sources=source_rows,
            created_by=opts.created_by,
            fingerprint=fingerprint,
            extra={
                "val_fraction": opts.val_fraction,
                "shard_tokens": opts.shard_tokens,
                "read": asdict(opts.read),
            },
        )
        write_manifest(out / split, manifest)
    (out / JOURNAL_NAME).unlink(missing_ok=True)


def _map_ordered(
    units: Iterator[WorkUnit],
    settings: EncodeSettings,
    workers: int,
    start_unit: int,
    progress: Progress,
) -> Iterator[tuple[UnitResult, WorkUnit]]:
    """encode_unit over units >= start_unit, results in unit order, at most 2 per worker queued."""
    workers = workers or len(os.sched_getaffinity(0))
    todo = (u for u in units if u.index >= start_unit or progress.skip(u.disk_bytes))
    if workers == 1:
        init_worker(settings)
        for unit in todo:
            yield encode_unit(unit), unit
        return
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (torch, tqdm)
    with ctx.Pool(workers, initializer=init_worker, initargs=(settings,)) as pool:
        in_flight: deque = deque()
        for unit in todo:
            in_flight.append((pool.apply_async(encode_unit, (unit,)), _light(unit)))
            if len(in_flight) >= 2 * workers:
                result, done = in_flight.popleft()
                yield result.get(), done
        while in_flight:
            result, done = in_flight.popleft()
            yield result.get(), done


def _light(unit: WorkUnit) -> WorkUnit:
    """The unit without its text, so the main process does not keep it while it is encoded."""
    return WorkUnit(unit.index, [], unit.disk_bytes, unit.text_bytes)


def print_summary(summary: dict, file=sys.stdout) -> None:
    print(format_summary(summary), file=file, flush=True)
