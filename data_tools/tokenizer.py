"""Train a sentencepiece tokenizer on a sample of the corpora.

python -m data_tools.tokenizer corpus/ --out tok/tokenizer.model --vocab-size 32768
"""

from __future__ import annotations

import json

from data_tools.cli_common import add_input_arguments, inputs_from_args, make_parser, run_main
from distlm.data.tokenizer import MODEL_TYPES, TokenizerTrainOptions, train_tokenizer


def main(argv: list[str] | None = None) -> int:
    d = TokenizerTrainOptions()
    p = make_parser("data_tools.tokenizer", __doc__)
    add_input_arguments(p)
    p.add_argument("--out", required=True, help="path of the .model to write (+ its _card.json)")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--model-type", choices=MODEL_TYPES, default=d.model_type)
    p.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false")
    p.add_argument(
        "--character-coverage",
        type=float,
        default=d.character_coverage,
        help="share of the sample's characters given a piece; the rest become byte pieces",
    )
    for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument(
        "--sample-bytes",
        type=int,
        default=d.sample_bytes,
        help="text sampled from the inputs to train on",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the sample")
    p.add_argument(
        "--train-threads",
        type=int,
        default=d.train_threads,
        help="sentencepiece threads (the model depends on it: keep it fixed)",
    )
    args = p.parse_args(argv)
    inputs, read = inputs_from_args(args)
    opts = TokenizerTrainOptions(
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        byte_fallback=args.byte_fallback,
        character_coverage=args.character_coverage,
        unk_id=args.unk_id,
        bos_id=args.bos_id,
        eos_id=args.eos_id,
        pad_id=args.pad_id,
        sample_bytes=args.sample_bytes,
        seed=args.seed,
        train_threads=args.train_threads,
    )
    card = train_tokenizer(inputs, args.out, read, opts)
    print(json.dumps({k: card[k] for k in ("model_file", "sha256", "vocab_size", "sample")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
