"""Cost of the loader's token id guard: one max over each batch's int64 window buffer.

    .venv/bin/python bench/bench_token_guard.py [--mb 4] [--batches 300] [--rounds 7]

Builds a dataset from the stdlib's .py sources (vocab 4096), then times building this rank's
batch (`_BatchMaker.make`: gather seq_len + 1 windows into int64, the work the prefetch thread
does) without the guard (A) and with it (B), alternated by bench/paired.py, in CPU time of the
process (one thread: the figure a shared, loaded machine skews least). The ratio is throughput
with / without (< 1: the guard costs). seq_len 2048, 32 samples per batch, as
bench_data.py's loader figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from paired import cpu_timed, paired  # noqa: E402

import distlm.data.loader as loader_module  # noqa: E402
from distlm.config import DataConfig  # noqa: E402
from distlm.data.demo_corpus import stdlib_sources  # noqa: E402
from distlm.data.pretokenize import PretokenizeOptions, pretokenize  # noqa: E402
from distlm.data.readers import ReadOptions  # noqa: E402
from distlm.data.tokenizer import TokenizerTrainOptions, train_tokenizer  # noqa: E402

SEQ_LEN, BATCH, VOCAB = 2048, 32, 4096


def build_dataset(root: Path, mb: float) -> Path:
    inputs = stdlib_sources(int(mb * 1e6))
    tok = root / "tok.model"
    train_tokenizer(inputs, tok, ReadOptions(), TokenizerTrainOptions(vocab_size=VOCAB))
    opts = PretokenizeOptions(str(tok), inputs, str(root / "ds"), workers=1, progress=False)
    pretokenize(opts)
    return root / "ds"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=float, default=4.0, help="MB of stdlib sources to tokenize")
    p.add_argument("--batches", type=int, default=300, help="batches built per timing")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    guard = loader_module.check_batch
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(Path(tmp), args.mb)
        cfg = DataConfig(path=str(dataset), val_split="")
        maker = loader_module._maker(
            cfg, "train", VOCAB, SEQ_LEN, BATCH, BATCH, 0, 1, torch.device("cpu")
        )
        torch.set_num_threads(1)  # the prefetch thread is one thread

        def build(check) -> float:
            loader_module.check_batch = check
            try:
                return cpu_timed(lambda: [maker.make(k) for k in range(args.batches)])
            finally:
                loader_module.check_batch = guard

        result = paired(
            "no guard",
            lambda: build(lambda *a: None),
            "max guard",
            lambda: build(guard),
            rounds=args.rounds,
        )
    tokens = args.batches * BATCH * (SEQ_LEN + 1)
    a, b = (min(x) for x in (result.a, result.b))
    print(f"{args.batches} batches of {BATCH} x {SEQ_LEN + 1} int64 tokens, CPU time, best round:")
    print(f"  without guard {a / args.batches * 1e6:.0f} us/batch ({tokens / a / 1e6:.0f} M tok/s)")
    print(f"  with guard    {b / args.batches * 1e6:.0f} us/batch ({tokens / b / 1e6:.0f} M tok/s)")
    print(result.line("s"))


if __name__ == "__main__":
    main()
