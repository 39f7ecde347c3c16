"""Arguments shared by the data tools, and the one way they report a DataError."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

from distlm.data.errors import DataError
from distlm.data.readers import FORMATS, TXT_MODES, InputFile, ReadOptions, resolve_inputs


def make_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose help starts with the tool's docstring (its usage example)."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="files, directories (recursive) or globs")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="force one format for all inputs (default: from the file name)",
    )
    parser.add_argument(
        "--text-field",
        action="append",
        metavar="NAME",
        help="jsonl key / parquet column holding the text (default: text); once for all "
        "inputs, or once per input in their order when they differ (any name for a .txt input)",
    )
    parser.add_argument(
        "--txt-mode",
        choices=TXT_MODES,
        default="file",
        help=".txt: one document per file, or per blank-line separated block",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and count) jsonl lines that are not JSON or lack the field",
    )


def inputs_from_args(args: argparse.Namespace) -> tuple[list[InputFile], ReadOptions]:
    fields = args.text_field or ["text"]
    per_input = fields if len(fields) > 1 else None  # resolve_inputs checks one per input
    read = ReadOptions(text_field=fields[0], txt_mode=args.txt_mode, skip_bad=args.skip_bad)
    return resolve_inputs(args.inputs, args.format, per_input), read


def command_line() -> str:
    return shlex.join(
        [
            "python -m "
            + (
                sys.modules["__main__"].__spec__.name
                if sys.modules["__main__"].__spec__
                else sys.argv[0]
            )
        ]
        + sys.argv[1:]
    )


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a tool; a DataError becomes one line on stderr and exit status 2."""
    try:
        return main(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
