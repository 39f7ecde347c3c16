"""Summarize a dataset, verify its checksums and token ids, decode sample documents.

python -m data_tools.inspect data/demo --verify --decode 3
"""

from __future__ import annotations

from pathlib import Path

from data_tools.cli_common import make_parser, run_main
from distlm.data.inspect_dataset import describe, sample_documents, verify


def main(argv: list[str] | None = None) -> int:
    p = make_parser("data_tools.inspect", __doc__)
    p.add_argument("dataset", help="dataset directory (holds train/, val/)")
    p.add_argument("--verify", action="store_true", help="sha256 and token id range of every shard")
    p.add_argument("--decode", type=int, default=0, metavar="N", help="decode N random documents")
    p.add_argument("--split", default="train")
    p.add_argument("--chars", type=int, default=400, help="characters shown per document")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = Path(args.dataset)
    print(describe(root))
    if args.verify:
        print(f"verified: {verify(root)} shards match their sha256, token ids below the vocab size")
    for file, row, text in sample_documents(root, args.split, args.decode, args.seed):
        print(f"\n--- {args.split}/{file} row {row} ({len(text):,} chars) ---")
        print(text[: args.chars] + ("..." if len(text) > args.chars else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
