"""Text, markdown, JSON and PNG renderings of plans and scaling reports."""

from __future__ import annotations

import json
from pathlib import Path

from distlm.config import Config
from distlm.plan.flops import gpu_class
from distlm.plan.planner import Plan, Row, world_size_of

GB = 1e9


def _num(x: float) -> str:
    """Human-readable count: 1.2k, 3.4M, 5.6B."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _days(tokens: float, tps: float) -> str:
    return f"{tokens / tps / 86400:,.1f}" if tps else "-"


def plan_header(cfg: Config, p: Plan) -> str:
    hw = cfg.hardware
    peak = f"{hw.peak_bf16_tflops:g} TFLOP/s dense bf16" if hw.peak_bf16_tflops else "no peak"
    label = "predicted" if gpu_class(hw.gpu_name) != "cpu" else "CPU: speed not predicted"
    return (
        f"model {cfg.model.name}: {p.params / 1e6:,.1f}M params | seq_len {cfg.train.seq_len} | "
        f"global batch {cfg.train.global_batch_tokens:,} tokens\n"
        f"hardware {hw.name}: {world_size_of(cfg)} x {hw.gpu_name}, "
        f"{hw.memory_gb or p.budget_bytes / GB:.1f} GB, {peak}, interconnect {hw.interconnect}\n"
        f"memory budget per rank {p.budget_bytes / GB:.1f} GB | token budget "
        f"{_num(p.token_budget)} ({p.token_budget / p.params:g} tokens/param) | figures: {label}"
    )


def _row_cells(r: Row, token_budget: float) -> list[str]:
    m = r.memory
    assert m is not None
    other = m.gathered + m.cast_weights + m.workspace
    fits = "yes" if r.fits else "NO"
    tps = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-"
    return [
        ("* " if r.configured else "  ") + r.strategy,
        "on" if r.activation_checkpointing else "off",
        "8bit" if r.optimizer == "adamw8bit" else r.optimizer,
        r.offload,
        f"{r.loss_chunk_tokens}" if r.loss_chunk_tokens else "off",
        f"{r.micro_batch_size}" if r.micro_batch_size else "0",
        f"{m.params / GB:.2f}",
        f"{m.grads / GB:.2f}",
        f"{m.optimizer / GB:.2f}",
        f"{(m.activations + m.recompute) / GB:.2f}",
        f"{m.logits / GB:.2f}",
        f"{other / GB:.2f}",
        f"{m.peak / GB:.2f}",
        f"{m.host / GB:.1f}" if m.host else "-",
        fits if r.host_fits else "RAM",
        tps,
        _num(r.tokens_per_s * 86400) if r.tokens_per_s else "-",
        f"{r.mfu:.0%}" if r.mfu else "-",
        _days(token_budget, r.tokens_per_s),
    ]


PLAN_COLUMNS = [
    "strategy",
    "AC",
    "optim",
    "offload",
    "loss chunk",
    "micro",
    "params GB",
    "grads GB",
    "optim GB",
    "act GB",
    "logits GB",
    "other GB",
    "peak GB",
    "host GB",
    "fits",
    "tokens/s",
    "tokens/day",
    "MFU",
    "days to budget",
]


def table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def format_plan(cfg: Config, p: Plan) -> str:
    rows = [_row_cells(r, p.token_budget) for r in p.rows]
    notes = (
        "* = configured (micro-batch as configured); other rows use the largest micro-batch "
        "that divides the local batch and fits. 'other' = gathered layers + autocast weight "
        "copies + CUDA context. Speeds assume an MFU per GPU class (distlm/plan/flops.py). "
        "host GB = offloaded states in host RAM (fits 'RAM': the card holds it, host RAM "
        "does not); offload rows add the host's optimizer step and PCIe copies to each step."
    )
    return "\n".join([plan_header(cfg, p), "", table(PLAN_COLUMNS, rows), notes, "", *p.advice])


def plan_json(cfg: Config, p: Plan) -> str:
    return json.dumps(
        {
            "model": cfg.model.name,
            "hardware": cfg.hardware.name,
            "params": p.params,
            "world_size": p.world_size,
            "budget_bytes": p.budget_bytes,
            "token_budget": p.token_budget,
            "rows": [r.as_dict() for r in p.rows],
            "advice": p.advice,
        },
        indent=2,
    )


def write_plot(
    path: Path, sizes: list[int], measured: list[float], predicted: list[float], title: str
) -> None:
    """Efficiency vs world size, measured beside predicted (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sizes, measured, "o-", label="measured")
    ax.plot(sizes, predicted, "s--", label="predicted (comm model)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("world size")
    ax.set_ylabel("scaling efficiency")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
