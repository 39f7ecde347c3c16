"""Cut the inputs into ordered work units, in the main process.

A unit is a list of pieces of ~`unit_bytes` of text: whole txt files (read by the worker), runs
of complete jsonl lines (decompressed here, so .gz / .zst files are split too) or ranges of parquet
row groups (read by the worker). Units depend only on the inputs and `unit_bytes`, never on the
number of workers, so writing results in unit order gives the same shards at any worker count.
Units are generated lazily: the main process never holds more than the units in flight.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from distlm.data.errors import DataError
from distlm.data.readers import InputFile, Piece, ReadOptions


@dataclass
class WorkUnit:
    index: int
    pieces: list[Piece] = field(default_factory=list)
    disk_bytes: int = 0  # share of the input files' on-disk size, for the progress bar
    text_bytes: int = 0  # size of the pieces, to decide when the unit is full


def iter_units(
    inputs: list[InputFile], opts: ReadOptions, unit_bytes: int, read_txt: bool = True
) -> Iterator[WorkUnit]:
    """`read_txt=False`: txt pieces carry only their path; the consumer calls `read_piece` (a
    worker process, so the main process, which shares the cores, neither reads nor pickles text).
    """
    unit = WorkUnit(0)
    for source, inp in enumerate(inputs):
        for piece, size, disk_bytes in _iter_pieces(source, inp, opts, unit_bytes):
            unit.pieces.append(read_piece(piece) if read_txt else piece)
            unit.text_bytes += size
            unit.disk_bytes += disk_bytes
            if unit.text_bytes >= unit_bytes:
                yield unit
                unit = WorkUnit(unit.index + 1)
    if unit.pieces:
        yield unit


def _iter_pieces(
    source: int, inp: InputFile, opts: ReadOptions, unit_bytes: int
) -> Iterator[tuple[Piece, int, int]]:
    if inp.fmt == "parquet":
        yield from _parquet_pieces(source, inp, opts, unit_bytes)
    elif inp.fmt == "txt":
        yield Piece(source, "txt", inp.path), inp.bytes, inp.bytes  # read by `read_piece`
    else:
        yield from _jsonl_pieces(source, inp, unit_bytes)


def read_piece(piece: Piece) -> Piece:
    """A txt piece with its file's bytes (read in the worker); other pieces as they are."""
    if piece.kind != "txt" or piece.data:
        return piece
    return dataclasses.replace(piece, data=_read_file(piece.path))


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _open_jsonl(inp: InputFile) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file): the raw file's position measures progress on disk."""
    raw = open(inp.path, "rb")  # noqa: SIM115 - closed by the caller
    if inp.fmt == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw), raw
    if inp.fmt == "jsonl.zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw), raw
    return raw, raw


def _jsonl_pieces(source: int, inp: InputFile, unit_bytes: int) -> Iterator[tuple[Piece, int, int]]:
    stream, raw = _open_jsonl(inp)
    carry, line, done_bytes = b"", 1, 0
    with raw:
        while True:
            try:
                block = stream.read(unit_bytes)
            except (OSError, EOFError, zlib.error, ValueError) as e:
                raise DataError(
                    f"{inp.path}: cannot decompress ({e}); is it a valid {inp.fmt} file?"
                ) from None
            data = carry + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if cut == 0 and block:  # no complete line yet: read on
                carry = data
                continue
            if cut:
                disk = raw.tell() - done_bytes if block else inp.bytes - done_bytes
                done_bytes += disk
                piece = Piece(
                    source, "jsonl", inp.path, data[:cut], line, text_field=inp.text_field
                )
                yield piece, cut, disk
                line += data.count(b"\n", 0, cut)
            carry = data[cut:]
            if not block:
                return


def _parquet_pieces(
    source: int, inp: InputFile, opts: ReadOptions, unit_bytes: int
) -> Iterator[tuple[Piece, int, int]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(inp.path).metadata
        names = meta.schema.to_arrow_schema().names
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{inp.path}: unreadable parquet ({type(e).__name__}: {e})") from None
    field = inp.text_field or opts.text_field
    if field not in names:
        raise DataError(
            f"{inp.path}: no column {field!r} (columns: {names}); choose one with --text-field"
        )
    start, size, rows = 0, 0, max(1, meta.num_rows)
    for rg in range(meta.num_row_groups):
        size += meta.row_group(rg).total_byte_size
        if size >= unit_bytes or rg == meta.num_row_groups - 1:
            piece_rows = sum(meta.row_group(i).num_rows for i in range(start, rg + 1))
            piece = Piece(
                source, "parquet", inp.path, row_groups=(start, rg + 1), text_field=inp.text_field
            )
            yield piece, size, inp.bytes * piece_rows // rows
            start, size = rg + 1, 0
