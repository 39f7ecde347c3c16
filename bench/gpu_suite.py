"""GPU acceptance suite: one command, one CUDA GPU, under 8 minutes.

For model=124m and model=500m at seq 2048 (bf16 autocast, fused AdamW, one process):
  distlm bf16 eager | bf16 + compile | bf16 + compile + FP8 (torchao tensorwise),
  transformers LlamaForCausalLM (same shape) bf16 + compile, side by side;
tokens/s (warm-up and compilation excluded), MFU (6N + 12 L d T FLOPs per token over the
detected card's dense bf16 peak), peak memory (`max_memory_allocated`) against the planner's
prediction (distlm/plan/memory_model.py, less its CUDA-context term; the prediction is for the
bf16 model: the FP8 row shows it for reference). Appends a dated table naming the GPU to
bench/RESULTS.md.

    bash bench/gpu_suite.sh                      # the whole suite on this machine's GPU
    .venv/bin/python bench/gpu_suite.py --batch 4 --models 124m
    .venv/bin/python bench/gpu_suite.py --smoke --results /tmp/r.md   # CPU, tiny: the CI check

`--smoke` runs a tiny model for 2 steps on CPU (FP8 emulated, no compile: compile on CPU is
tested in tests/test_compile_bf16.py) so the suite's code is exercised by the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_batch, make_side, peak_step_bytes, tokens_per_s  # noqa: E402

from distlm.config import Config  # noqa: E402
from distlm.config_loader import load_config  # noqa: E402
from distlm.parallel.float8 import plan_float8  # noqa: E402
from distlm.plan.memory_model import estimate  # noqa: E402
from distlm.plan.planner import layout_for  # noqa: E402
from distlm.train.metrics import flops_per_token  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
VARIANTS = {  # name -> (side, compile, fp8)
    "bf16 eager": ("distlm", False, False),
    "bf16 + compile": ("distlm", True, False),
    "bf16 + compile + FP8": ("distlm", True, True),
    "transformers bf16 + compile": ("peer", True, False),
}
SMOKE_VARIANTS = {  # CPU: no compile (15-70 s cold; tests/test_compile_bf16.py covers it)
    "bf16 eager": ("distlm", False, False),
    "bf16 eager + FP8 (emulated)": ("distlm", False, True),
    "transformers bf16 eager": ("peer", False, False),
}
SMOKE = [
    "model.vocab_size=512",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.max_seq_len=64",
]


@dataclass
class Row:
    model: str
    variant: str
    micro_batch: str
    tokens_per_s: float
    mfu: float  # 0 where the peak is unknown (CPU)
    peak_gb: float
    predicted_gb: float  # 0 for the peer (the planner models distlm)

    def cells(self) -> list[str]:
        pred = f"{self.predicted_gb:.3f}" if self.predicted_gb else "-"
        err = f"{self.peak_gb / self.predicted_gb - 1:+.1%}" if self.predicted_gb else "-"
        mfu = f"{self.mfu:.1%}" if self.mfu else "-"
        return [
            self.model,
            self.variant,
            self.micro_batch,
            f"{self.tokens_per_s:,.0f}",
            mfu,
            f"{self.peak_gb:.3f}",
            pred,
            err,
        ]


def predicted_peak_bytes(cfg: Config, micro: int, device: torch.device) -> int:
    lay = layout_for(cfg, "ddp", False, micro)
    lay = dataclasses.replace(lay, world_size=1, device=device.type, bf16=True)
    pred = estimate(cfg.model, lay)
    return pred.peak - pred.workspace  # allocated bytes have no CUDA context in them


def run_variant(
    cfg: Config, variant: str, spec: tuple, micro: int, device: torch.device, steps: int
) -> Row:
    side_name, compile, fp8 = spec
    seq = cfg.train.seq_len
    batch = make_batch(cfg.model, micro, seq, device)
    plan = plan_float8(cfg, device, micro * seq) if fp8 else None
    side = make_side(side_name, cfg.model, device, True, compile, batch, fp8=plan)
    for _ in range(2):  # warm-up: compilation, AdamW states, allocator
        side.step()
    tps = tokens_per_s(side, steps, micro * seq, device)
    peak = peak_step_bytes(side, batch, device)
    peak_tflops = cfg.hardware.peak_bf16_tflops
    mfu = tps * flops_per_token(cfg) / (peak_tflops * 1e12) if peak_tflops else 0.0
    pred = predicted_peak_bytes(cfg, micro, device) if side_name == "distlm" else 0
    del side
    torch._dynamo.reset()  # drop compiled graphs (and what they hold) before the next model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peak_gb = peak / 1e9 if peak is not None else 0.0  # None: compiled on CPU (not measured)
    return Row(cfg.model.name, variant, f"{micro} x {seq}", tps, mfu, peak_gb, pred / 1e9)


def table(rows: list[Row], title: str, notes: list[str]) -> str:
    head = ["model", "variant", "micro-batch", "tokens/s", "MFU", "peak GB", "planner GB", "error"]
    lines = [f"## {title}", "", *notes, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    by = {(r.model, r.variant): r.tokens_per_s for r in rows}
    ratios = []
    for model in dict.fromkeys(r.model for r in rows):
        for a, b, what in (
            ("transformers bf16 + compile", "bf16 + compile", "distlm / transformers (compiled)"),
            ("bf16 + compile", "bf16 + compile + FP8", "FP8 / bf16 (compiled)"),
            ("bf16 eager", "bf16 + compile", "compile / eager"),
        ):
            if (model, a) in by and (model, b) in by:
                ratios.append(f"- {model}: {what} tokens/s = {by[model, b] / by[model, a]:.3f}")
    return "\n".join([*lines, "", *ratios, ""]) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, 2 steps (CI)")
    ap.add_argument("--models", default="124m,500m")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8, help="micro-batch (samples)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--budget-s", type=float, default=450, help="skip variants after this")
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.smoke:
        device, models, seq, micro, steps = torch.device("cpu"), ["tiny"], 32, 2, 2
        variants, hardware, extra = SMOKE_VARIANTS, "hardware=cpu", SMOKE
    else:
        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA GPU here; use --smoke for the CPU check", file=sys.stderr)
            return 2
        device, models, seq, micro, steps = (
            torch.device("cuda"),
            args.models.split(","),
            args.seq,
            args.batch,
            args.steps,
        )
        variants, hardware, extra = VARIANTS, "hardware=auto", []
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)"
    rows, skipped = [], []
    for name in models:
        cfg = load_config(
            [f"model={name}", hardware, f"train.seq_len={seq}", f"model.max_seq_len={seq}"]
            + extra
            + ["train.fp8=true", "train.compile=true", f"train.micro_batch_size={micro}"]
            + [f"train.global_batch_tokens={micro * seq}"]
        )
        for variant, spec in variants.items():
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{name} {variant}")
                continue
            row = run_variant(cfg, variant, spec, micro, device, steps)
            rows.append(row)
            print(" | ".join(row.cells()), flush=True)
    cap = torch.cuda.get_device_capability() if device.type == "cuda" else None
    notes = [
        f"Command: `bash bench/gpu_suite.sh{' --smoke' if args.smoke else ''}`; torch "
        f"{torch.__version__}, {gpu}{f' (sm_{cap[0]}{cap[1]})' if cap else ''}, one process, "
        f"bf16 autocast, AdamW (fused on CUDA), {steps} timed steps after 2 warm-up steps; peak = "
        f"max_memory_allocated over one step; planner = distlm/plan/memory_model.py.",
        f"Wall time of the suite: {time.perf_counter() - start:.0f} s."
        + (f" Skipped (time budget): {', '.join(skipped)}." if skipped else ""),
    ]
    date = datetime.date.today().isoformat()
    text = table(rows, f"GPU acceptance suite: {gpu}, {date}", notes)
    print(text)
    with open(args.results, "a") as f:
        f.write("\n" + text)
    print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
