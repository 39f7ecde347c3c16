"""What each training switch costs and gains on this machine: bf16 autocast, torch.compile,
activation checkpointing, FP8 (torchao; emulated without FP8 hardware), each against the plain
fp32 eager step of the same model, batch and threads (bench/paired.py: alternated, median of
the paired ratios). Memory: peak live tensor bytes of one steady step (CPU) or
`max_memory_allocated` (CUDA).

    .venv/bin/python bench/bench_switches.py                  # tiny, 8 x 256, 1 thread, CPU
    .venv/bin/python bench/bench_switches.py --model 124m --batch 8 --seq 2048 --threads 0

On CPU the figures say what the switch does to the work (tokens per CPU-second) and to memory
here; they do not predict a GPU (bf16 and FP8 have no fast CPU kernels on most CPUs; FP8 is
emulated). The GPU figures are the GPU suite's (bench/gpu_suite.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_batch, make_side, peak_step_bytes, tokens_per_s  # noqa: E402
from paired import paired  # noqa: E402

from distlm.config_loader import load_config  # noqa: E402
from distlm.parallel.float8 import plan_float8  # noqa: E402

SWITCHES = {  # name -> make_side keyword arguments
    "bf16 autocast": dict(bf16=True),
    "compile": dict(compile=True),
    "activation checkpointing": dict(checkpointing=True),
    "FP8 (bf16 autocast)": dict(bf16=True, fp8=True),
}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="0 = torch's default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated switch names")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(
        [f"model={args.model}", f"model.max_seq_len={args.seq}", f"train.seq_len={args.seq}"]
        + ["train.fp8=true"]
    )
    batch = make_batch(cfg.model, args.batch, args.seq, device)
    n_tok = args.batch * args.seq
    base = make_side("distlm", cfg.model, device, False, False, batch)
    base_mem = peak_step_bytes(base, batch, device)
    print(f"bench_switches model={args.model} batch {args.batch} x {args.seq} on {device}, "
          f"{torch.get_num_threads()} threads; baseline fp32 eager")  # fmt: skip
    lines = []
    for name, kw in SWITCHES.items():
        if args.only and name not in args.only.split(","):
            continue
        fp8 = plan_float8(cfg, device, n_tok) if kw.get("fp8") else None
        side = make_side(
            "distlm", cfg.model, device, kw.get("bf16", False), kw.get("compile", False), batch,
            fp8=fp8, checkpointing=kw.get("checkpointing", False),
        )  # fmt: skip
        res = paired(
            "fp32 eager",
            lambda: tokens_per_s(base, args.steps, n_tok, device),
            name,
            lambda s=side: tokens_per_s(s, args.steps, n_tok, device),
            rounds=args.rounds,
            verbose=False,
        )
        mem = peak_step_bytes(side, batch, device)
        memory = f"{mem / 1e6:,.1f} MB = x{mem / base_mem:.3f}" if mem else "not measurable here"
        lines.append(
            f"  {name:<26} speed x{res.median:.3f} (min {res.min:.3f}, max {res.max:.3f}, "
            f"n={res.n}); peak memory {memory}"
        )
        print(lines[-1], flush=True)
    print(f"  baseline peak memory {base_mem / 1e6:,.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
