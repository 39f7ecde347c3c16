"""Multiple-choice task files: one jsonl line per example, checked line by line.

    {"context": "def add(a, b):\\n    return", "endings": [" a + b", " a - b"], "label": 0}

`context` is the text the model is conditioned on, `endings` the candidate continuations (each is
appended to the context exactly as written, so put a leading space where the text needs one) and
`label` the index of the right ending. Extra fields are ignored. Any other shape stops the load
with the file and line, before any model work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class EvalError(ValueError):
    """A task file or an evaluation argument is invalid; the message names the file and line."""


def check_at_least(values: list[tuple[str, int, int]], error: type[Exception] = EvalError) -> None:
    """Each (name, value, least): refuse value < least, naming the key or flag."""
    for name, value, least in values:
        if value < least:
            raise error(f"{name}={value} must be >= {least}")


@dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    name: str  # the file's stem: metrics are logged as <name>/acc and <name>/acc_norm
    path: Path
    examples: tuple[Example, ...]


def _parse_line(record: object, where: str) -> Example:
    if not isinstance(record, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("context", "endings", "label"):
        if key not in record:
            raise EvalError(
                f"{where}: missing field '{key}'; each line needs "
                '{"context": str, "endings": [str, ...], "label": int}'
            )
    context, endings, label = record["context"], record["endings"], record["label"]
    if not isinstance(context, str):
        raise EvalError(f"{where}: 'context' must be a string, got {type(context).__name__}")
    if not isinstance(endings, list) or len(endings) < 2:
        raise EvalError(f"{where}: 'endings' must be a list of at least 2 strings")
    for i, ending in enumerate(endings):
        if not isinstance(ending, str) or not ending:
            raise EvalError(f"{where}: endings[{i}] must be a non-empty string, got {ending!r}")
    if isinstance(label, bool) or not isinstance(label, int):
        raise EvalError(f"{where}: 'label' must be an integer index, got {label!r}")
    if not 0 <= label < len(endings):
        raise EvalError(
            f"{where}: label {label} is out of range for {len(endings)} endings "
            f"(expected 0..{len(endings) - 1})"
        )
    return Example(context, tuple(endings), label)


def load_task(path: str | Path, max_examples: int = 0) -> Task:
    """Read and check every line of a task file; keep the first `max_examples` (0 = all)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalError(f"{path}: no such task file (eval.tasks / --task)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: unreadable task file ({e})") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        examples.append(_parse_line(record, where))
        if max_examples and len(examples) == max_examples:
            break
    if not examples:
        raise EvalError(f"{path}: no examples (an empty task file)")
    return Task(path.stem, path, tuple(examples))
