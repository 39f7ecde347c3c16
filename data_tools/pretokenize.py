"""Tokenize corpora into a sharded Arrow dataset (resumable: rerun the same command).

python -m data_tools.pretokenize corpus/*.jsonl.zst --tokenizer tok/tokenizer.model --out data/web
"""

from __future__ import annotations

from data_tools.cli_common import (
    add_input_arguments,
    command_line,
    inputs_from_args,
    make_parser,
    run_main,
)
from distlm.data.pretokenize import PretokenizeOptions, pretokenize, print_summary


def main(argv: list[str] | None = None) -> int:
    d = PretokenizeOptions("", [], "")
    p = make_parser("data_tools.pretokenize", __doc__)
    add_input_arguments(p)
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model")
    p.add_argument("--out", required=True, help="dataset directory (train/, val/, manifests)")
    p.add_argument("--workers", type=int, default=d.workers, help="processes; 0 = all cores")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of documents, chosen by a hash of their text, in val/",
    )
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=d.shard_tokens,
        help="target tokens per shard (shards end at a document boundary)",
    )
    p.add_argument(
        "--unit-mb",
        type=float,
        default=d.unit_bytes / 2**20,
        help="MiB of text per work unit (the resume granularity)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete dataset made with other arguments",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    inputs, read = inputs_from_args(args)
    opts = PretokenizeOptions(
        tokenizer=args.tokenizer,
        inputs=inputs,
        out_dir=args.out,
        read=read,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        unit_bytes=int(args.unit_mb * 2**20),
        overwrite=args.overwrite,
        progress=args.progress,
        created_by=command_line(),
    )
    print_summary(pretokenize(opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
