"""Scaling efficiency at 2 ranks, measured A/B alternated, beside the scaling model's prediction.

    .venv/bin/python bench/bench_scale.py [--rounds 5] [--steps 8] [key=value ...]

Each round runs `distlm.plan.scale_worker` at world size 1 and at world size 2 (order flipped
every round, bench/paired.py), weak scaling: the figure per round is efficiency = tokens/s(2) /
(2 x tokens/s(1)) of the two runs of that round, so a burst of load hits both sides of a ratio.
Beside it, each round's prediction (`distlm.plan.scale_model`: world size 1's step + the exposed
communication on the link the world-size-2 run measured) and the part that explains the gap.
Default model: the README's tiny CPU configuration (one core per rank, gloo).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired import paired  # noqa: E402

from distlm.config_loader import load_config  # noqa: E402
from distlm.plan.scale import measured_rows, run_world_size  # noqa: E402

TINY = [
    "model=tiny",
    "hardware=cpu",
    "model.d_model=128",
    "model.n_layers=2",
    "model.vocab_size=1024",
    "train.seq_len=64",
    "train.global_batch_tokens=512",
    "train.device=cpu",
]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    opts, overrides = ap.parse_known_args(argv)
    overrides = [*TINY, *overrides]
    cfg = load_config(overrides)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:

        def run(n: int) -> float:
            out = Path(tmp) / f"run{len(runs[1]) + len(runs[2])}"
            r = run_world_size(n, out, opts.steps, opts.warmup, overrides)
            runs[n].append(r)
            return r["tokens_per_s"] / n  # per rank: B / A is the efficiency

        result = paired("1 rank", lambda: run(1), "2 ranks", lambda: run(2), rounds=opts.rounds)
    rows = [measured_rows(cfg, [a, b])[1] for a, b in zip(runs[1][1:], runs[2][1:], strict=True)]
    predicted = [r["predicted_efficiency"] for r in rows]
    print(f"bench_scale {' '.join(overrides)}, {opts.steps} steps ({opts.warmup} warm-up) per run")
    print(f"  measured efficiency at 2 ranks: {result.line('tokens/s/rank')}")
    print(
        f"  predicted efficiency: median {statistics.median(predicted):.3f} "
        f"(min {min(predicted):.3f}, max {max(predicted):.3f}, n={len(predicted)})"
    )
    for i, r in enumerate(rows, 1):
        parts = ", ".join(f"{k} {v:+.4f} s" for k, v in r["gap_parts_s"].items())
        print(
            f"  round {i}: measured {r['efficiency']:.3f} predicted {r['predicted_efficiency']:.3f}"
            f" bus {r['bus_gbps']:.2f} GB/s; gap: {r['explained_by']} ({parts})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
