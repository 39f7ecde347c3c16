"""`python -m distlm scale [presets] [key=value ...]`: the scaling-efficiency report.

    python -m distlm scale model=tiny hardware=cpu --out runs/scale          # measure 1, 2 ranks
    python -m distlm scale model=1b hardware=8xh100-nvlink --predict          # model only

Runs short benchmark trainings at world sizes 1, 2, 4, ... up to the GPUs present (CPU: the cores),
each as `torchrun -m distlm.plan.scale_worker`, warm-up excluded. Efficiency(N) = tokens/s(N) /
(N x tokens/s(1)), printed beside the efficiency the communication model predicts for the same
step (its compute time measured, its bandwidth the preset's, or on CPU the all-reduce bus bandwidth
measured in the run). Writes scale.json, scale.md, scale.png and tensorboard scalars under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from distlm.config import Config
from distlm.config_loader import load_config
from distlm.hardware.presets import expand_auto
from distlm.model.llama import count_params
from distlm.plan import report
from distlm.plan.comm_model import estimate_comm, predicted_efficiency
from distlm.plan.flops import mfu_of, predict_speed
from distlm.plan.planner import is_bf16, local_batch, world_size_of

COLUMNS = [
    "world size",
    "tokens/s",
    "step s",
    "compute s",
    "comm wait s",
    "MFU",
    "peak GB",
    "efficiency",
    "predicted eff.",
]


def default_sizes(limit: int) -> list[int]:
    sizes, n = [], 1
    while n <= limit:
        sizes.append(n)
        n *= 2
    return sizes


def run_world_size(n: int, out: Path, steps: int, warmup: int, overrides: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"world{n}.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "distlm.plan.scale_worker",
        str(path),
        str(steps),
        str(warmup),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"world size {n} failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(path.read_text())


def predict_row(cfg: Config, n: int, compute_s: float, bus_gbps: float | None) -> float:
    """Comm-model efficiency at world size n for a step whose compute takes `compute_s`."""
    accum = max(1, local_batch(cfg) // max(cfg.train.micro_batch_size or local_batch(cfg), 1))
    est = estimate_comm(
        cfg.hardware,
        cfg.parallel.strategy,
        count_params(cfg.model),
        n,
        accum,
        is_bf16(cfg),
        compute_s,
        bandwidth_gbps=bus_gbps,
    )
    return predicted_efficiency(compute_s, est.exposed_s)


def measured_rows(cfg: Config, results: list[dict]) -> list[dict]:
    base = results[0]["tokens_per_s"]
    rows = []
    for r in results:
        n = r["world_size"]
        bus = r["bus_gbps"] if cfg.hardware.gpu_name == "cpu" else None
        compute = r["compute_s"] + r["optimizer_s"]
        rows.append(
            {
                **r,
                "mfu": mfu_of(cfg, r["tokens_per_s"], n),
                "efficiency": r["tokens_per_s"] / (n * base),
                "predicted_efficiency": predict_row(cfg, n, compute, bus) if n > 1 else 1.0,
            }
        )
    return rows


def predicted_rows(cfg: Config, sizes: list[int]) -> list[dict]:
    """Model-only rows (GPU presets): weak scaling, per-rank batch = train.global_batch_tokens."""
    rows = []
    one = predict_speed(cfg, 1, cfg.parallel.activation_checkpointing)
    for n in sizes:
        eff = predict_row(cfg, n, one.seconds_per_step, None) if n > 1 else 1.0
        tps = n * one.tokens_per_s * eff
        rows.append(
            {
                "world_size": n,
                "tokens_per_s": tps,
                "step_time_s": one.seconds_per_step / eff,
                "compute_s": one.seconds_per_step,
                "comm_wait_s": one.seconds_per_step * (1 / eff - 1),
                "mfu": one.assumed_mfu * eff,
                "peak_mem_bytes": 0,
                "efficiency": eff,
                "predicted_efficiency": eff,
            }
        )
    return rows


def cells(r: dict, predicted: bool) -> list[str]:
    eff = "-" if predicted else f"{r['efficiency']:.2f}"
    return [
        str(r["world_size"]),
        f"{r['tokens_per_s']:,.0f}",
        f"{r['step_time_s']:.3f}",
        f"{r['compute_s']:.3f}",
        f"{r['comm_wait_s']:.3f}",
        f"{r['mfu']:.0%}" if r["mfu"] else "-",
        f"{r['peak_mem_bytes'] / 1e9:.3f}" if r["peak_mem_bytes"] else "-",
        eff,
        f"{r['predicted_efficiency']:.2f}",
    ]


def write_outputs(out: Path, cfg: Config, rows: list[dict], predicted: bool) -> str:
    out.mkdir(parents=True, exist_ok=True)
    label = "PREDICTED (comm model, no GPU run)" if predicted else "measured"
    title = (
        f"{cfg.model.name} on {cfg.hardware.name}, {cfg.parallel.strategy}, "
        f"{cfg.train.global_batch_tokens} tokens/rank/step: {label}"
    )
    md = f"**{title}**\n\n" + report.markdown_table(COLUMNS, [cells(r, predicted) for r in rows])
    (out / "scale.json").write_text(
        json.dumps({"title": title, "predicted": predicted, "rows": rows}, indent=2)
    )
    (out / "scale.md").write_text(md + "\n")
    sizes = [r["world_size"] for r in rows]
    measured = [r["predicted_efficiency"] if predicted else r["efficiency"] for r in rows]
    report.write_plot(
        out / "scale.png", sizes, measured, [r["predicted_efficiency"] for r in rows], title
    )
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as tb:
        for r in rows:
            for key in ("tokens_per_s", "efficiency", "predicted_efficiency", "comm_wait_s"):
                tb.add_scalar(f"scale/{key}", r[key], r["world_size"])
    return md


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distlm scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--world-sizes", default="", help="e.g. 1,2 (default: 1, 2, 4 ... available)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4, help="first steps left out of the numbers")
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--predict", action="store_true", help="comm model only (no run)")
    args = ap.parse_args(argv[1:] if argv and argv[0] == "scale" else argv)
    overrides, why = expand_auto(args.overrides)
    if why:
        print(why)
    cfg = load_config(overrides)
    gpus = torch.cuda.device_count()
    limit = world_size_of(cfg) if args.predict else (gpus or os.cpu_count() or 1)
    sizes = (
        [int(s) for s in args.world_sizes.split(",")] if args.world_sizes else default_sizes(limit)
    )
    if args.predict:
        rows = predicted_rows(cfg, sizes)
    else:
        if not gpus and "train.device=cpu" not in overrides:
            overrides = [*overrides, "train.device=cpu"]
        results = [
            run_world_size(n, Path(args.out), args.steps, args.warmup, overrides) for n in sizes
        ]
        rows = measured_rows(cfg, results)
    print(write_outputs(Path(args.out), cfg, rows, args.predict))
    print(f"\nwrote {args.out}/scale.json, scale.md, scale.png, tensorboard/")
    return 0
