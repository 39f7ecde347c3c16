"""The scaling prediction for world size N, and what explains its gap to a measurement.

Weak scaling (every rank keeps the 1-rank batch), so perfect scaling keeps the step time:

    predicted step(N) = single-rank step (measured: compute + optimizer + data wait, or on a GPU
                        preset FLOPs / (assumed MFU x peak))
                      + exposed communication(N)    (distlm.plan.comm_model: the strategy's bytes,
                        the link's latency and bus bandwidth, the overlap strategy and device allow)
    predicted efficiency(N) = single-rank step / predicted step(N)

Compute time is the single rank's, never world size N's own: N ranks that compute slower than one
(shared cores, memory bandwidth, clocks, another job on the machine) are what the prediction
cannot know, and the report shows it as "compute slowdown" beside "exposed communication" (comm
wait beyond the predicted exposure) and "data" (batch wait beyond the single rank's).
"""

from __future__ import annotations

from dataclasses import dataclass

from distlm.config import Config
from distlm.model.llama import count_params
from distlm.plan.comm_model import Link, Traffic, estimate_comm
from distlm.plan.planner import is_bf16

GRAD_ELEM_BYTES = {"fp32": 4, "bf16": 2}
NEGLIGIBLE_POINTS = 2.0  # a gap below this many efficiency points needs no explanation


@dataclass(frozen=True)
class Prediction:
    world_size: int
    base_step_s: float  # the single-rank step (compute + optimizer + data wait)
    comm_s: float  # all collectives of a step, if nothing overlapped
    exposed_s: float  # the part that adds to the step
    traffic: Traffic
    link: Link

    @property
    def step_s(self) -> float:
        return self.base_step_s + self.exposed_s

    @property
    def efficiency(self) -> float:
        return self.base_step_s / self.step_s if self.step_s > 0 else 0.0


def accum_steps(cfg: Config) -> int:
    """Micro-batches per optimizer step; `distlm scale` reads train.global_batch_tokens per rank."""
    local = max(1, cfg.train.global_batch_tokens // cfg.train.seq_len)
    return max(1, local // max(cfg.train.micro_batch_size or local, 1))


def predict(
    cfg: Config, n: int, base_step_s: float, compute_s: float, link: Link | None, overlap: bool
) -> Prediction:
    """Prediction at world size n for a single-rank step of `base_step_s` (`compute_s` of it
    forward + backward, what communication can hide behind)."""
    p = cfg.parallel
    est = estimate_comm(
        cfg.hardware,
        p.strategy,
        count_params(cfg.model),
        n,
        accum_steps(cfg),
        is_bf16(cfg),
        compute_s,
        bucket_bytes=_bucket_bytes(cfg),
        grad_elem_bytes=GRAD_ELEM_BYTES[p.grad_comm_dtype],
        link=link,
        overlap=overlap,
    )
    assert est.traffic is not None
    return Prediction(
        n, base_step_s, est.comm_s, est.exposed_s, est.traffic, link or Link(est.bus_bandwidth_gbps)
    )


def _bucket_bytes(cfg: Config) -> float:
    p = cfg.parallel
    if p.strategy == "ddp":
        return p.ddp_bucket_cap_mb * 1024 * 1024
    if p.strategy == "fsdp2":  # one reduce-scatter per block
        return max(1.0, count_params(cfg.model) * 4 / (cfg.model.n_layers + 1))
    return p.zero_bucket_size * 4  # DeepSpeed's bucket is in elements


def explain_gap(base: dict, row: dict, pred: Prediction) -> tuple[dict[str, float], str]:
    """Seconds each part adds to the measured step beyond the prediction, and the largest one.

    The three parts sum exactly to measured step(N) - predicted step(N). `base` and `row` are
    scale_worker results at world size 1 and N.
    """
    parts = {
        "compute slowdown": (row["compute_s"] + row["optimizer_s"])
        - (base["compute_s"] + base["optimizer_s"]),
        "exposed communication": row["comm_wait_s"] - base["comm_wait_s"] - pred.exposed_s,
        "data": row["data_s"] - base["data_s"],
    }
    gap_points = 100 * (pred.efficiency - base_total(base) / base_total(row))
    if abs(gap_points) < NEGLIGIBLE_POINTS:
        return parts, "none (within 2 points)"
    if gap_points > 0:
        return parts, max(parts, key=parts.get)
    return parts, min(parts, key=parts.get) + " (faster than predicted)"


def base_total(r: dict) -> float:
    """A measured row's seconds per step as tokens/s sees them: step + data wait."""
    return r["step_time_s"] + r["data_s"]


def counted_collective_bytes(row: dict) -> float:
    """Bytes the profiled step handed to reductions and gathers (broadcasts are set-up only)."""
    wire = row.get("wire_bytes", {})
    return float(sum(v for k, v in wire.items() if k.startswith(("all_reduce", "reduce", "all_g"))))


def modelled_collective_bytes(traffic: Traffic, n: int) -> float:
    """The same figure from the model: whole gradients, and the local shard of each gather."""
    return traffic.grad_bytes + (traffic.param_bytes / n if n else 0.0)
