"""What evaluation costs: validation with bits per byte vs the model's own loss, and batched
multiple-choice scoring vs one pair per forward.

    .venv/bin/python bench/bench_eval.py [--data data/demo] [--rounds 5]

Model `tiny` (4.5 M parameters, vocab 4096) at init on the demo dataset (make it with
`.venv/bin/python -m data_tools.demo_data --out data/demo`), one process, fp32 on CPU.
1. validation, 4 global batches of 16 x 256 tokens: `distlm.eval.validation.evaluate` (per-token
   loss from the logits, bytes per target token) against the loop it replaced (`model(x, y)`,
   the mean loss only).
2. multiple choice, 64 examples x 4 endings of 32 + 6 tokens cut from the val split: batches of
   16 pairs against batches of 1.
Figures are CPU seconds of this process (`paired.cpu_timed`: the machine is shared), run with
OMP_NUM_THREADS=1; a ratio > 1 means B is faster.
"""

from __future__ import annotations

import argparse

import torch
from paired import cpu_timed, paired

from distlm.config_loader import load_config
from distlm.eval.multiple_choice import Request, score_requests
from distlm.eval.validation import build_validation, evaluate
from distlm.model import build_model

SEQ, BATCH, VAL_BATCHES = 256, 16, 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(["model=tiny", f"data.path={args.data}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    layout = dict(seq_len=SEQ, global_batch_size=BATCH, micro_batch_size=BATCH, rank=0)
    validation = build_validation(
        cfg.data,
        VAL_BATCHES,
        world_size=1,
        device=torch.device("cpu"),
        vocab_size=cfg.model.vocab_size,
        **layout,
    )
    loader, table = validation.loaders[""], validation.byte_lengths

    @torch.no_grad()
    def model_loss() -> list[float]:
        return [model(x, y).item() for x, y in loader]

    old = ("model(x, y) loss", lambda: cpu_timed(model_loss))
    new = ("loss + bpb", lambda: cpu_timed(lambda: evaluate(model, loader, table)))
    print(paired(*old, *new, rounds=args.rounds).line("CPU s"))

    windows = torch.cat([x for x, _ in loader])[:64, : 32 + 6].tolist()  # (64, 38)
    requests = [
        Request(i, j, tuple(w[:32] + w[32:][j:] + w[32:][:j]), 6)
        for i, w in enumerate(windows)
        for j in range(4)
    ]  # 4 rotations of the 6 ending tokens

    def score(batch: int):
        return lambda: cpu_timed(lambda: score_requests(model, requests, batch))

    one, sixteen = ("1 pair/forward", score(1)), ("16 pairs/forward", score(16))
    print(paired(*one, *sixteen, rounds=args.rounds).line(f"CPU s for {len(requests)} pairs"))


if __name__ == "__main__":
    main()
