"""`python -m distlm <command> [key=value ...]` — the one entry point for users.

Commands map to a `main(argv) -> int` in the module that owns the work; this file only dispatches.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("distlm.train.cli", "train a model: presets and key=value overrides"),
    "config": ("distlm.train.cli", "print the resolved config for presets and overrides"),
    "params": ("distlm.train.cli", "print the exact parameter count of a model preset"),
    "plan": ("distlm.plan.cli", "predict memory / speed before launch (--measure, --dry-run)"),
    "scale": ("distlm.plan.scale", "measure scaling efficiency across world sizes"),
    "eval": ("distlm.eval.cli", "multiple-choice accuracy of a checkpoint on task .jsonl files"),
    "consolidate": (
        "distlm.checkpoint.consolidate",
        "write one safetensors file from a checkpoint",
    ),
    "export": ("distlm.export.cli", "write a Hugging Face model folder from a checkpoint"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items())
    return f"usage: python -m distlm <command> [args]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"distlm: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main([command, *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
