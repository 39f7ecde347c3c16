"""Framework overhead: the trainer's tokens/s as a ratio to a bare PyTorch loop.

Both train the same model preset with the same global batch on the same device in one process;
the bare loop is nanoGPT-minimal (forward, backward, clip, AdamW step on pre-made batches), the
trainer is `distlm.train.train` with its loader, strategy, schedule, logging and metrics.
Target: ratio >= 0.95 (the framework costs under 5 %).

    .venv/bin/python bench/bench_trainer.py [--rounds 5]          # model=tiny on CPU
    .venv/bin/python bench/bench_trainer.py model=30m train.seq_len=512

The two alternate (bench/paired.py: A B, B A, ...), each round a fresh model / trainer run of
STEPS steps with the first WARMUP left out; the median of the per-round ratios is the figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import paired  # noqa: E402

from distlm.config_loader import load_config
from distlm.data.demo_corpus import prepare_demo_dataset
from distlm.model import build_model
from distlm.parallel.base import build_optimizer
from distlm.train.trainer import train

STEPS, WARMUP = 20, 5  # per round


def bare_loop_tokens_per_s(cfg, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.model, device)
    opt = build_optimizer(model, cfg, device)
    bs = cfg.train.global_batch_tokens // cfg.train.seq_len
    batches = [
        torch.randint(0, cfg.model.vocab_size, (bs, cfg.train.seq_len + 1), device=device)
        for _ in range(4)
    ]
    for i in range(STEPS):
        if i == WARMUP:
            t0 = time.perf_counter()
        tokens = batches[i % 4]
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return (STEPS - WARMUP) * cfg.train.global_batch_tokens / (time.perf_counter() - t0)


def trainer_tokens_per_s(args: list[str], data: Path, run_dir: Path) -> float:
    cfg = load_config(
        [
            *args,
            f"data.path={data}",
            f"logging.run_dir={run_dir}",
            f"train.steps={STEPS}",
            f"logging.log_every_steps={WARMUP}",
            "train.eval_every_steps=0",
            "train.sample_tokens=0",
            "checkpoint.every_steps=0",
            "logging.tensorboard=false",
            "data.val_split=",
            "train.warmup_steps=1",
        ]
    )
    start = time.perf_counter()
    train(cfg)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["step"] > WARMUP and "tokens_per_s" in r]
    print(f"  trainer wall {time.perf_counter() - start:.1f}s incl. setup")
    return sum(r["tokens_per_s"] for r in steady) / len(steady)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    opts, argv = ap.parse_known_args(argv)
    args = ["model=tiny", "train.seq_len=256", "train.global_batch_tokens=8192", *argv]
    data = prepare_demo_dataset(Path("data/demo"))
    cfg = load_config([*args, f"data.path={data}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))
        result = paired(
            "bare PyTorch loop",
            lambda: bare_loop_tokens_per_s(cfg, device),
            "distlm trainer",
            lambda: trainer_tokens_per_s(args, data, Path(tmp) / f"run{next(runs)}"),
            rounds=opts.rounds,
            warmup=0,
        )
    print(f"bench_trainer {' '.join(args)} on {device} ({torch.get_num_threads()} threads)")
    print(f"  {result.line('tokens/s')}  (target >= 0.95)")


if __name__ == "__main__":
    main(sys.argv[1:])
