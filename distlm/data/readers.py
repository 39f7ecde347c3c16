"""Input files -> documents: txt, jsonl (.gz, .zst) and parquet.

Resolving inputs (files, directories, globs) happens in the main process; turning a piece of a
file into document texts (`iter_piece_texts`) happens in a worker. Invalid UTF-8 is replaced with
U+FFFD and counted, whitespace-only documents are skipped and counted, and a jsonl line that is not
JSON or lacks the text field is an error naming file:line (or skipped and counted with skip_bad).
"""

from __future__ import annotations

import dataclasses
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
    text_field: str = ""  # jsonl key / parquet column of this file; "" = ReadOptions.text_field

    def key(self) -> dict:
        """What identifies this input in a dataset's fingerprint (text_field only when set, so
        datasets made before per-input fields existed keep theirs)."""
        key = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deepcopy
        if not self.text_field:
            del key["text_field"]
        return key


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


def resolve_inputs(
    patterns: list[str], fmt: str | None = None, text_fields: list[str] | None = None
) -> list[InputFile]:
    """Files, directories (recursive) or globs -> a sorted, de-duplicated list of input files.

    `fmt` forces a format (e.g. "txt" for a tree of `.py` files); otherwise it comes from the name.
    `text_fields`, one per pattern, gives the files of each pattern their jsonl key / parquet
    column (inputs that name the text differently); None: ReadOptions.text_field for all.
    """
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} is not one of {list(FORMATS)}")
    if text_fields is not None and len(text_fields) != len(patterns):
        raise DataError(
            f"--text-field given {len(text_fields)} times for {len(patterns)} inputs: give it "
            "once (for all inputs) or once per input, in the order of the inputs"
        )
    found: list[tuple[str, str]] = []  # (file, text field)
    for i, pattern in enumerate(patterns):
        field = text_fields[i] if text_fields is not None else ""
        if os.path.isdir(pattern):
            files = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file())
            found += [(f, field) for f in files if fmt or detect_format(f)]
        elif os.path.isfile(pattern):
            if not (fmt or detect_format(pattern)):
                raise DataError(
                    f"{pattern}: unknown input format; expected a name ending in "
                    f"{', '.join('.' + f for f in FORMATS)} (or pass --format)"
                )
            found.append((pattern, field))
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"{pattern}: no such file, directory or glob match")
            found += [(m, field) for m in matches if fmt or detect_format(m)]
    inputs, seen = [], {}
    for f, field in found:
        path = os.path.abspath(f)
        if path in seen and seen[path] != field:
            raise DataError(
                f"{path}: matched by two inputs with different --text-field "
                f"({seen[path]!r}, {field!r}); name each file by one input"
            )
        if path not in seen:
            seen[path] = field
            fmt_ = fmt or detect_format(path)
            inputs.append(InputFile(path, fmt_, os.path.getsize(path), field))
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
    if piece.text_field:
        opts = dataclasses.replace(opts, text_field=piece.text_field)
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
    text_field: str = ""  # its input's text_field ("" = ReadOptions.text_field)
