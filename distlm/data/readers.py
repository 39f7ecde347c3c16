"""Input files -> documents: txt, jsonl (.gz, .zst) and parquet.

Resolving inputs (files, directories, globs) happens in the main process; turning a piece of a
file into document texts (`iter_piece_texts`) happens in a worker. Invalid UTF-8 is replaced with
U+FFFD and counted, whitespace-only documents are skipped and counted, and a jsonl line that is not
JSON or lacks the text field is an error naming file:line (or skipped and counted with skip_bad).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distlm.data.errors import DataError

FORMATS = ("txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet")
TXT_MODES = ("file", "blank-line")  # one document per file | per blank-line separated block
_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")
PARQUET_BATCH_ROWS = 1024  # rows per pyarrow batch inside a row group: bounded memory


@dataclass(frozen=True)
class InputFile:
    path: str  # as resolved (absolute)
    fmt: str  # one of FORMATS
    bytes: int  # size on disk


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"  # jsonl key / parquet column holding the document
    txt_mode: str = "file"  # one of TXT_MODES
    skip_bad: bool = False  # skip (and count) bad jsonl lines instead of stopping


class SourceStats:
    """Counters of one input file; summed over work units in order."""

    FIELDS = ("documents", "text_bytes", "tokens", "empty", "invalid_utf8", "bad_lines")

    def __init__(self, values: list[int] | None = None) -> None:
        self.values = list(values) if values else [0] * len(self.FIELDS)

    def add(self, other: SourceStats) -> None:
        self.values = [a + b for a, b in zip(self.values, other.values, strict=True)]

    def bump(self, field: str, n: int = 1) -> None:
        self.values[self.FIELDS.index(field)] += n

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, self.values, strict=True))


def detect_format(path: str) -> str | None:
    name = path.lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):  # "jsonl.gz" before "jsonl"
        if name.endswith("." + fmt):
            return fmt
    return None


def resolve_inputs(patterns: list[str], fmt: str | None = None) -> list[InputFile]:
    """Files, directories (recursive) or globs -> a sorted, de-duplicated list of input files.

    `fmt` forces a format (e.g. "txt" for a tree of `.py` files); otherwise it comes from the name.
    """
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} is not one of {list(FORMATS)}")
    found: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            files = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file())
            found += [f for f in files if fmt or detect_format(f)]
        elif os.path.isfile(pattern):
            if not (fmt or detect_format(pattern)):
                raise DataError(
                    f"{pattern}: unknown input format; expected a name ending in "
                    f"{', '.join('.' + f for f in FORMATS)} (or pass --format)"
                )
            found.append(pattern)
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"{pattern}: no such file, directory or glob match")
            found += [m for m in matches if fmt or detect_format(m)]
    inputs, seen = [], set()
    for f in found:
        path = os.path.abspath(f)
        if path not in seen:
            seen.add(path)
            inputs.append(InputFile(path, fmt or detect_format(path), os.path.getsize(path)))
    if not inputs:
        raise DataError(f"no input files with a known format in {patterns}")
    return inputs


def normalize(text: str, stats: SourceStats) -> tuple[str, bytes] | None:
    """The text as it will be tokenized and its UTF-8 bytes; None (and counted) when empty."""
    if not text or text.isspace():
        stats.bump("empty")
        return None
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
        data = text.encode("utf-8", "replace")
        text = data.decode()
        stats.bump("invalid_utf8")
    return text, data


def decode_utf8(data: bytes, stats: SourceStats) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        stats.bump("invalid_utf8")
        return data.decode("utf-8", "replace")


def _line_error(path: str, line: int, what: str) -> DataError:
    return DataError(f"{path}:{line}: {what} (pass --skip-bad to skip and count such lines)")


def iter_jsonl_texts(
    data: bytes, path: str, first_line: int, opts: ReadOptions, stats: SourceStats
) -> Iterator[str]:
    """Texts of complete jsonl lines; `first_line` is the 1-based line number of data's first."""
    for i, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        line = first_line + i
        try:
            text = json.loads(decode_utf8(raw, stats))[opts.text_field]
        except ValueError:
            bad = "not valid JSON"
        except (KeyError, TypeError):
            bad = f"no {opts.text_field!r} field (set it with --text-field)"
        else:
            if text is None or isinstance(text, str):
                yield text or ""
                continue
            bad = f"field {opts.text_field!r} is {type(text).__name__}, expected a string"
        if not opts.skip_bad:
            raise _line_error(path, line, bad)
        stats.bump("bad_lines")


def iter_parquet_texts(
    path: str, row_groups: tuple[int, int], opts: ReadOptions, stats: SourceStats
) -> Iterator[str]:
    """Texts of the row groups [a, b) of a parquet file, read in bounded batches."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(
            batch_size=PARQUET_BATCH_ROWS,
            row_groups=list(range(*row_groups)),
            columns=[opts.text_field],
        )
        for batch in batches:
            for value in batch.column(0).to_pylist():
                if isinstance(value, bytes):
                    value = decode_utf8(value, stats)
                yield value or ""
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: unreadable parquet ({type(e).__name__}: {e})") from None


def iter_piece_texts(piece: Piece, opts: ReadOptions, stats: SourceStats) -> Iterator[str]:
    """All texts of one piece, before normalization (empty ones included)."""
    if piece.kind == "parquet":
        yield from iter_parquet_texts(piece.path, piece.row_groups, opts, stats)
    elif piece.kind == "jsonl":
        yield from iter_jsonl_texts(piece.data, piece.path, piece.first_line, opts, stats)
    elif opts.txt_mode == "file":
        yield decode_utf8(piece.data, stats)
    else:
        yield from _BLANK_LINES.split(decode_utf8(piece.data, stats))


@dataclass(frozen=True)
class Piece:
    """Part of one input file, small enough to hand to a worker."""

    source: int  # index of the input file
    kind: str  # txt | jsonl | parquet
    path: str
    data: bytes = b""  # txt: the whole file; jsonl: complete lines (decompressed)
    first_line: int = 1  # jsonl: line number of data's first line
    row_groups: tuple[int, int] = (0, 0)  # parquet: row groups [a, b)
