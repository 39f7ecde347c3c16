"""`python -m distlm scale [presets] [key=value ...]`: the scaling-efficiency report.

    python -m distlm scale model=tiny hardware=cpu --out runs/scale          # measure 1, 2 ranks
    python -m distlm scale model=1b hardware=8x5090-pcie --predict            # model only

Runs short benchmark trainings at world sizes 1, 2, 4, ... up to the GPUs present (CPU: the cores),
each as `torchrun -m distlm.plan.scale_worker`, warm-up excluded; train.global_batch_tokens is the
batch of ONE rank (weak scaling). Efficiency(N) = tokens/s(N) / (N x tokens/s(1)), printed beside
the efficiency `distlm.plan.scale_model` predicts from the single-rank step, the bytes the strategy
moves, the link measured in the run (an all-reduce sweep) and the overlap the strategy and device
allow, and the part that explains the gap (compute slowdown, exposed communication, data).
`--predict` prints the model's table for a GPU preset, with parallel.grad_comm_dtype fp32 and bf16,
and its assumptions. Writes scale.json, scale.md, scale.png and tensorboard scalars under --out.
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
from distlm.plan import report
from distlm.plan.comm_model import LINK_EFFICIENCY, fit_link, overlappable_share
from distlm.plan.flops import mfu_of, predict_speed
from distlm.plan.planner import world_size_of
from distlm.plan.scale_model import (
    accum_steps,
    base_total,
    counted_collective_bytes,
    explain_gap,
    modelled_collective_bytes,
    predict,
)

MEASURED_COLUMNS = [
    "world size",
    "tokens/s",
    "step s",
    "compute s",
    "comm wait s",
    "data s",
    "bus GB/s",
    "peak GB",
    "efficiency",
    "predicted eff.",
    "gap pts",
    "explained by",
]
PREDICTED_COLUMNS = [
    "world size",
    "tokens/s",
    "step s",
    "compute s",
    "comm s",
    "exposed s",
    "bus GB/rank/step",
    "MFU",
    "predicted eff.",
    "eff. if no overlap",
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


def run_rounds(
    sizes: list[int], rounds: int, out: Path, args: argparse.Namespace, overrides: list[str]
) -> list[dict]:
    """Each world size `rounds` times, in alternating order (1 2 4, 4 2 1, ...), so a burst of
    load on a shared machine does not land on one world size only; per size the median run."""
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for i in range(rounds):
        for n in sizes if i % 2 == 0 else sizes[::-1]:
            runs[n].append(run_world_size(n, out / f"round{i}", args.steps, args.warmup, overrides))
    results = []
    for n in sizes:
        ordered = sorted(runs[n], key=base_total)
        results.append({**ordered[len(ordered) // 2], "rounds": rounds})
    return results


def measured_rows(cfg: Config, results: list[dict]) -> list[dict]:
    """Each world size's measurement beside the prediction from world size 1 (results[0])."""
    base = results[0]
    if base["world_size"] != 1:
        raise ValueError("the prediction starts from world size 1: include 1 in --world-sizes")
    gpu = cfg.hardware.gpu_name != "cpu" and torch.cuda.is_available()
    rows = []
    for r in results:
        n = r["world_size"]
        link = fit_link(*zip(*r["allreduce_sweep"], strict=True), n) if n > 1 else None
        pred = predict(cfg, n, base_total(base), base["compute_s"], link, overlap=gpu)
        parts, culprit = explain_gap(base, r, pred) if n > 1 else ({}, "-")
        eff = base_total(base) / base_total(r)
        rows.append(
            {
                **r,
                "mfu": mfu_of(cfg, r["tokens_per_s"], n),
                "efficiency": eff,
                "predicted_efficiency": pred.efficiency,
                "predicted_step_s": pred.step_s,
                "predicted_exposed_s": pred.exposed_s,
                "bus_gbps": link.bus_gbps if link else 0.0,
                "latency_s": link.latency_s if link else 0.0,
                "gap_points": 100 * (pred.efficiency - eff),
                "gap_parts_s": parts,
                "explained_by": culprit,
                "collective_bytes_counted": counted_collective_bytes(r),
                "collective_bytes_model": modelled_collective_bytes(pred.traffic, n),
            }
        )
    return rows


def predicted_rows(cfg: Config, sizes: list[int]) -> list[dict]:
    """Model-only rows (GPU presets): weak scaling, per-rank batch = train.global_batch_tokens."""
    one = predict_speed(cfg, 1, cfg.parallel.activation_checkpointing)
    rows = []
    for n in sizes:
        pred = predict(cfg, n, one.seconds_per_step, one.seconds_per_step, None, overlap=True)
        rows.append(
            {
                "world_size": n,
                "tokens_per_s": n * cfg.train.global_batch_tokens / pred.step_s,
                "step_time_s": pred.step_s,
                "compute_s": one.seconds_per_step,
                "comm_s": pred.comm_s,
                "comm_wait_s": pred.exposed_s,
                "bus_bytes": pred.traffic.bus_bytes,
                "mfu": one.assumed_mfu * pred.efficiency,
                "peak_mem_bytes": 0,
                "efficiency": pred.efficiency,
                "predicted_efficiency": pred.efficiency,
                "bus_gbps": pred.link.bus_gbps,
                "no_overlap_efficiency": pred.base_step_s / (pred.base_step_s + pred.comm_s),
            }
        )
    return rows


def assumptions(cfg: Config) -> str:
    """What the predicted table rests on, one line each."""
    hw, p = cfg.hardware, cfg.parallel
    one = predict_speed(cfg, 1, p.activation_checkpointing)
    link = predict(cfg, 2, 1.0, 1.0, None, overlap=True).link
    kind = "nvlink" if hw.interconnect == "nvlink" else "pcie"
    return "\n".join(
        [
            "assumptions:",
            f"- compute: {cfg.train.global_batch_tokens:,} tokens/rank/step x "
            f"{one.flops_per_token / 1e9:.2f} GFLOP/token / ({one.assumed_mfu:.0%} assumed MFU x "
            f"{hw.peak_bf16_tflops:g} TFLOP/s) = {one.seconds_per_step:.3f} s per step, the same "
            "on every rank (weak scaling; distlm/plan/flops.py)",
            f"- {accum_steps(cfg)} micro-batch(es) of {cfg.train.micro_batch_size or 'all'} x "
            f"{cfg.train.seq_len} per step; strategy {p.strategy}",
            f"- link: ring bus bandwidth {link.bus_gbps:.1f} GB/s "
            f"(intra-node {hw.intra_node_bandwidth_gbps:g} GB/s x {kind} efficiency"
            + (
                f", capped by {hw.inter_node_bandwidth_gbps:g} GB/s x "
                f"{LINK_EFFICIENCY['network']} between {hw.num_nodes} nodes"
                if hw.num_nodes > 1
                else ""
            )
            + f"; distlm/plan/comm_model.py), {link.latency_s * 1e6:.0f} us per collective",
            f"- overlap: communication hides behind {overlappable_share(p.strategy):.0%} of "
            "compute (gradient reduction during backward; prefetched gathers during all of it); "
            "the last gradient bucket is always exposed",
            "- gradient bytes per element on the wire: fp32 4, bf16 2 (parallel.grad_comm_dtype); "
            "parameters gathered in the compute dtype",
        ]
    )


def measured_cells(r: dict) -> list[str]:
    n = r["world_size"]
    return [
        str(n),
        f"{r['tokens_per_s']:,.0f}",
        f"{r['step_time_s']:.3f}",
        f"{r['compute_s'] + r['optimizer_s']:.3f}",
        f"{r['comm_wait_s']:.3f}",
        f"{r['data_s']:.3f}",
        f"{r['bus_gbps']:.2f}" if n > 1 else "-",
        f"{r['peak_mem_bytes'] / 1e9:.3f}" if r["peak_mem_bytes"] else "-",
        f"{r['efficiency']:.2f}",
        f"{r['predicted_efficiency']:.2f}",
        f"{r['gap_points']:+.0f}" if n > 1 else "-",
        r["explained_by"],
    ]


def predicted_cells(r: dict) -> list[str]:
    return [
        str(r["world_size"]),
        f"{r['tokens_per_s']:,.0f}",
        f"{r['step_time_s']:.3f}",
        f"{r['compute_s']:.3f}",
        f"{r['comm_s']:.3f}",
        f"{r['comm_wait_s']:.3f}",
        f"{r['bus_bytes'] / 1e9:.2f}",
        f"{r['mfu']:.0%}" if r["mfu"] else "-",
        f"{r['predicted_efficiency']:.2f}",
        f"{r['no_overlap_efficiency']:.2f}",
    ]


def title_of(cfg: Config, label: str) -> str:
    return (
        f"{cfg.model.name} on {cfg.hardware.name}, {cfg.parallel.strategy}, "
        f"{cfg.train.global_batch_tokens} tokens/rank/step, "
        f"grad comm {cfg.parallel.grad_comm_dtype}: {label}"
    )


def measured_notes(rows: list[dict]) -> str:
    lines = [
        "compute s = forward + backward (replayed without gradient sync) + optimizer; the "
        "prediction for N ranks is world size 1's step plus the exposed communication the model "
        "predicts from N's measured all-reduce sweep (bus GB/s); gap = predicted - measured "
        "efficiency, explained by the part that adds most to the step beyond the prediction."
    ]
    for r in rows[1:]:
        parts = ", ".join(f"{k} {v:+.3f} s" for k, v in r["gap_parts_s"].items())
        lines.append(
            f"- {r['world_size']} ranks: {parts}; bytes to collectives per step: model "
            f"{r['collective_bytes_model'] / 1e6:.2f} MB, counted "
            f"{r['collective_bytes_counted'] / 1e6:.2f} MB; latency "
            f"{r['latency_s'] * 1e6:.0f} us; data from {r['data_source']}"
        )
    return "\n".join(lines)


def write_outputs(out: Path, title: str, tables: list[tuple[str, list[dict]]], md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(
        json.dumps(
            {
                "title": title,
                "predicted": "PREDICTED" in title,
                "rows": tables[0][1],
                "tables": [{"title": t, "rows": r} for t, r in tables],
            },
            indent=2,
        )
    )
    (out / "scale.md").write_text(md + "\n")
    rows = tables[0][1]
    sizes = [r["world_size"] for r in rows]
    report.write_plot(
        out / "scale.png",
        sizes,
        [r["efficiency"] for r in rows],
        [r["predicted_efficiency"] for r in rows],
        title,
    )
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as tb:
        for r in rows:
            for key in ("tokens_per_s", "efficiency", "predicted_efficiency", "comm_wait_s"):
                tb.add_scalar(f"scale/{key}", r[key], r["world_size"])


def predict_report(cfg: Config, overrides: list[str], sizes: list[int]) -> tuple[str, list]:
    tables, parts = [], []
    for comm in ("fp32", "bf16"):
        c = load_config([*overrides, f"parallel.grad_comm_dtype={comm}"])
        title = title_of(c, "PREDICTED (model, no GPU run)")
        rows = predicted_rows(c, sizes)
        tables.append((title, rows))
        parts.append(
            f"**{title}**\n\n"
            + report.markdown_table(PREDICTED_COLUMNS, [predicted_cells(r) for r in rows])
        )
    return "\n\n".join([*parts, assumptions(cfg)]), tables


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
    ap.add_argument("--predict", action="store_true", help="model only (no run)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every world size this many times, alternating the order; report the median",
    )
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
        md, tables = predict_report(cfg, overrides, sizes)
    else:
        if not gpus and "train.device=cpu" not in overrides:
            overrides = [*overrides, "train.device=cpu"]
        results = run_rounds(sizes, args.rounds, Path(args.out), args, overrides)
        rows = measured_rows(cfg, results)
        title = title_of(cfg, "measured")
        table = report.markdown_table(MEASURED_COLUMNS, [measured_cells(r) for r in rows])
        md = f"**{title}**\n\n{table}\n\n{measured_notes(rows)}"
        tables = [(title, rows)]
    write_outputs(Path(args.out), tables[0][0], tables, md)
    print(md)
    print(f"\nwrote {args.out}/scale.json, scale.md, scale.png, tensorboard/")
    return 0
