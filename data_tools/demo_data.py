"""Build the demo dataset from the Python standard library's sources (idempotent, ~30 s).

python -m data_tools.demo_data --out data/demo
"""

from __future__ import annotations

from data_tools.cli_common import make_parser, run_main
from distlm.data.demo_corpus import DEMO_MAX_BYTES, prepare_demo_dataset


def main(argv: list[str] | None = None) -> int:
    p = make_parser("data_tools.demo_data", __doc__)
    p.add_argument("--out", default="data/demo")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument(
        "--max-mb", type=float, default=DEMO_MAX_BYTES / 1e6, help="MB of stdlib sources used"
    )
    p.add_argument("--workers", type=int, default=0, help="processes; 0 = all cores")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    prepare_demo_dataset(
        args.out,
        vocab_size=args.vocab_size,
        max_bytes=int(args.max_mb * 1e6),
        workers=args.workers,
        progress=args.progress,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
