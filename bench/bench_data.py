"""Data pipeline figures (printed, not a timed test), A and B alternated (bench/paired.py).

    .venv/bin/python bench/bench_data.py [--mb 30] [--workers 1,2] [--rounds 5] [--seconds 2]

1. Pre-tokenization with w workers against sentencepiece's own `encode_as_numpy(docs,
   num_threads=w)` of the same documents (already in memory: the fair baseline does no reading,
   hashing or writing). Per round: wall time ratio raw / ours, and the CPU-time ratio (this
   process + its reaped workers), which a loaded machine does not skew. Target: wall >= 0.95 at
   w=2 (the CPU ratio says what it would be on idle cores).
2. Loader tokens/s per process (`next_batch()`, seq_len 2048, prefetch thread on) as a ratio to
   slicing the same random windows out of a raw `np.memmap` of the same tokens into an int64
   batch. Targets: >= 0.8, and >= 20 M tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import Timing, cpu_with_children_timed, from_pairs, paired  # noqa: E402

from distlm.data.demo_corpus import stdlib_sources  # noqa: E402
from distlm.data.pretokenize import PretokenizeOptions, pretokenize  # noqa: E402
from distlm.data.readers import ReadOptions  # noqa: E402
from distlm.data.tokenizer import Tokenizer, TokenizerTrainOptions, train_tokenizer  # noqa: E402


def bench_pretokenize(root: Path, mb: float, workers: list[int], rounds: int) -> dict:
    inputs = stdlib_sources(int(mb * 1e6))
    text_mb = sum(i.bytes for i in inputs) / 1e6
    tok_path = root / "tok.model"
    train_tokenizer(inputs, tok_path, ReadOptions(), TokenizerTrainOptions(vocab_size=4096))
    tok = Tokenizer(tok_path)
    docs = [Path(i.path).read_bytes().decode("utf-8", "replace") for i in inputs]
    out: dict = {"text_mb": text_mb, "files": len(inputs), "results": {}}
    count = [0]

    def measured(fn, cpu: list[float]) -> Timing:
        """Wall time as the paired figure; CPU (with reaped children) kept beside it."""
        t0 = time.perf_counter()
        cpu.append(cpu_with_children_timed(fn).seconds)
        return Timing(time.perf_counter() - t0)

    def ours(w: int) -> None:
        count[0] += 1
        opts = PretokenizeOptions(
            str(tok_path),
            inputs,
            str(root / f"w{w}-{count[0]}"),
            workers=w,
            unit_bytes=1 << 20,
            progress=False,
        )
        pretokenize(opts)
        out["dataset"] = root / f"w{w}-{count[0]}"

    for w in workers:
        cpu_raw: list[float] = []
        cpu_ours: list[float] = []
        raw = lambda w=w: tok.sp.encode_as_numpy(docs, num_threads=w)  # noqa: E731
        wall = paired(
            f"sentencepiece num_threads={w}",
            lambda raw=raw, c=cpu_raw: measured(raw, c),
            f"pretokenize --workers {w}",
            lambda w=w, c=cpu_ours: measured(lambda: ours(w), c),
            rounds=rounds,
            warmup=0,
        )
        cpu = from_pairs(
            f"sentencepiece num_threads={w} CPU",
            cpu_raw,
            f"pretokenize --workers {w} CPU",
            cpu_ours,
            timings=True,
        )
        out["results"][w] = (wall, cpu)
    return out


def bench_loader(
    dataset: Path, seconds: float, rounds: int, seq_len: int = 2048, batch: int = 32
) -> dict:
    import torch

    from distlm.config import DataConfig
    from distlm.data import build_train_loader, dataset_vocab_size
    from distlm.data.manifest import read_manifest
    from distlm.data.shards import open_shard

    m = read_manifest(dataset / "train")
    tokens = np.concatenate(
        [open_shard(dataset / "train" / s["file"], m.np_dtype)[0] for s in m.shards]
    )
    raw_path = dataset / "tokens.bin"
    tokens.tofile(raw_path)
    mm = np.memmap(raw_path, dtype=tokens.dtype, mode="r")
    num_windows = (len(mm) - 1) // seq_len
    rng = np.random.default_rng(0)

    def raw_rate() -> float:
        out = np.empty((batch, seq_len + 1), dtype=np.int64)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            for j, w in enumerate(rng.integers(0, num_windows, batch).tolist()):
                out[j] = mm[w * seq_len : w * seq_len + seq_len + 1]
            n += batch * seq_len
        return n / (time.perf_counter() - t)

    def loader_rate() -> float:
        cfg = DataConfig(path=str(dataset), prefetch_batches=4)
        loader = build_train_loader(
            cfg,
            seq_len=seq_len,
            global_batch_size=batch,
            micro_batch_size=batch,
            rank=0,
            world_size=1,
            device=torch.device("cpu"),
            vocab_size=dataset_vocab_size(cfg),
        )
        loader.next_batch()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            for x, _ in loader.next_batch():
                n += x.numel()
        rate = n / (time.perf_counter() - t)
        loader.close()
        return rate

    result = paired(
        "raw np.memmap windows", raw_rate, "TrainLoader.next_batch()", loader_rate, rounds=rounds
    )
    return {"tokens": len(mm), "paired": result}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mb", type=float, default=30.0, help="MB of stdlib sources to tokenize")
    p.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2,4")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds per comparison")
    p.add_argument("--seconds", type=float, default=2.0, help="per loader measurement")
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        pre = bench_pretokenize(Path(tmp), args.mb, workers, args.rounds)
        print(
            f"pre-tokenize {pre['text_mb']:.1f} MB of stdlib .py ({pre['files']} files), "
            "vocab 4096, ratio > 1 = pretokenize faster:"
        )
        for wall, cpu in pre["results"].values():
            print(f"  wall: {wall.line('s')}")
            print(f"  CPU:  {cpu.line('s')}")
        lo = bench_loader(pre["dataset"], args.seconds, args.rounds)
        print(
            f"loader, seq_len 2048, batch 32, {lo['tokens'] / 1e6:.1f} M tokens (page cache hot):"
        )
        print(f"  {lo['paired'].line('tokens/s')}  (targets >= 0.8 and >= 20 M tokens/s)")


if __name__ == "__main__":
    main()
