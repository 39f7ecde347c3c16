"""`python -m distlm export RUN_DIR_OR_CHECKPOINT OUT_DIR`: a Hugging Face model folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distlm.checkpoint.manager import CheckpointError
from distlm.export.errors import ExportError
from distlm.export.hf_export import DTYPES, export
from distlm.export.safetensors_folder import parse_size


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distlm export",
        description="Write a Hugging Face folder (config.json, safetensors weights, tokenizer) "
        "from a distlm checkpoint of any strategy; loads with AutoModelForCausalLM and "
        "AutoTokenizer.",
    )
    p.add_argument("source", help="run dir, its checkpoints/ dir, or one checkpoint step dir")
    p.add_argument("out_dir", help="output folder; must not exist")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype")
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        help="largest safetensors file; above it, shards and an index (default 5GB)",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="sentencepiece .model (default: the tokenizer.model of the run's data.path)",
    )
    return p


def _files(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names) - 1} shards + {names[-1]}"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:] if argv and argv[0] == "export" else argv)
    try:
        summary = export(
            Path(args.source),
            Path(args.out_dir),
            dtype=args.dtype,
            max_shard_bytes=parse_size(args.max_shard_size),
            tokenizer=args.tokenizer,
        )
    except (ExportError, CheckpointError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['out_dir']}: {summary['architecture']}, "
        f"{summary['parameters']:,} parameters ({summary['dtype']}) from {summary['checkpoint']} "
        f"(step {summary['step']}); weights in {_files(summary['weight_files'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
