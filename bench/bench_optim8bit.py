"""8-bit AdamW (torchao) vs fp32 AdamW over the demo recipe: train and val loss side by side.

Both runs are the README demo (`recipe=demo model=tiny`, 4,096 tokens per step) for the same
number of steps on the same data; the only difference is `train.optimizer`.

    .venv/bin/python bench/bench_optim8bit.py                  # 200 steps, data/demo
    .venv/bin/python bench/bench_optim8bit.py train.steps=50
"""

from __future__ import annotations

import sys
import tempfile
import time

from distlm.config_loader import load_config
from distlm.train.trainer import train


def run(optimizer: str, extra: list[str], run_dir: str) -> tuple[dict, dict, float]:
    cfg = load_config(
        [
            "recipe=demo",
            "model=tiny",
            "hardware=cpu",
            "data.path=data/demo",
            "train.steps=200",
            "train.sample_tokens=0",
            "checkpoint.every_steps=0",
            "checkpoint.resume=never",
            "logging.tensorboard=false",
            f"logging.run_dir={run_dir}",
            f"train.optimizer={optimizer}",
            *extra,
        ]
    )
    start = time.perf_counter()
    result = train(cfg)
    return result.losses, result.val_losses, time.perf_counter() - start


def main(extra: list[str]) -> None:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for opt in ("adamw", "adamw8bit"):
            out[opt] = run(opt, extra, f"{tmp}/{opt}")
    (la, va, ta), (lb, vb, tb) = out["adamw"], out["adamw8bit"]
    last = max(la)
    diff = max(abs(la[s] - lb[s]) for s in la)
    print(f"demo recipe, {last} steps: train loss adamw {la[last]:.4f}, adamw8bit {lb[last]:.4f}")
    if va:
        s = max(va)
        print(f"  val loss at step {s}: adamw {va[s]:.4f}, adamw8bit {vb[s]:.4f}")
    print(f"  max |train loss difference| over logged steps: {diff:.4f}")
    print(f"  wall: adamw {ta:.0f} s, adamw8bit {tb:.0f} s (includes torchao's compile)")


if __name__ == "__main__":
    main(sys.argv[1:])
