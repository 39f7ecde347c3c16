"""Communication time per optimizer step from the strategy's collectives and the topology.

Ring collectives (Patarasuk & Yuan 2009; NCCL's "bus bandwidth", nccl-tests PERFORMANCE.md): over
W ranks, all-reduce moves 2(W-1)/W x S bytes per rank, reduce-scatter and all-gather (W-1)/W x S
each (S = the full tensor), so one call takes latency + bus bytes / bus bandwidth. Per optimizer
step of A micro-batches (P params, g bytes per gradient element on the wire, p per gathered
parameter element):
- ddp, zero1: one gradient all-reduce of P x g in buckets (DDP's `no_sync` skips the A-1 others);
- zero2: reduce-scatter of grads every micro-step + all-gather of the updated params;
- fsdp2, zero3: all-gather params in forward and again in backward every micro-step, and one
  reduce-scatter of grads (FSDP2 with `set_requires_gradient_sync(False)` on A-1 steps).
gloo has no ring reduce-scatter: torch and DeepSpeed run it as an all-reduce there (the
profiler's record says `gloo:all_reduce`, tests/test_grad_comm.py), so on CPU it costs as one.

Overlap, two conditions. The strategy allows it: gradient reduction runs during backward (DDP
buckets, ZeRO's IPG buckets, FSDP2's per-block reduce-scatter: 2/3 of compute), parameter gathers
are prefetched during forward and backward (all of it); the last bucket is always exposed. The
device must allow it too: a GPU's NCCL kernels and copy engines run beside its compute, but on
CPU (gloo) the reduction is itself CPU work on cores that training already keeps busy (one rank
per core), so nothing overlaps and all of it is exposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distlm.config import HardwareConfig

# Fraction of the link figure NCCL's ring reaches as bus bandwidth (assumptions, with sources):
# NVLink/NVSwitch H100: nccl-tests all_reduce busbw ~360 of 450 GB/s -> 0.8 (NVIDIA/nccl-tests
# results in NVIDIA's DGX H100 docs). PCIe with P2P: ~0.8 of the x16 link. PCIe without P2P
# (GeForce) stages through host memory: 10-20 GB/s measured on 8x RTX 4090 PCIe 4.0 (31.5 GB/s) in
# NVIDIA/nccl-tests#307 -> 0.4. InfiniBand between nodes: ~0.8 of the NICs' line rate.
LINK_EFFICIENCY = {"nvlink": 0.8, "pcie_p2p": 0.8, "pcie_no_p2p": 0.4, "network": 0.8}
PCIE4_X16_GBPS = 31.5  # per direction, PCI-SIG; used when a PCIe preset states no figure
LATENCY_S = 30e-6  # per collective call, NCCL ring latency order (nccl-tests small sizes)
BACKWARD_SHARE = 2 / 3  # backward is 4N of the 6N FLOPs per token


@dataclass(frozen=True)
class Link:
    """A measured or assumed collective cost: seconds = latency_s + bus bytes / bus bandwidth."""

    bus_gbps: float  # effective ring bus bandwidth, GB/s
    latency_s: float = LATENCY_S  # fixed cost per collective call
    source: str = "preset"  # "preset" (the hardware figures) or "measured" (an all-reduce sweep)

    def seconds(self, bus_bytes: float, calls: int) -> float:
        return calls * self.latency_s + bus_bytes / (self.bus_gbps * 1e9)


@dataclass(frozen=True)
class Traffic:
    """What one rank's collectives carry per optimizer step."""

    grad_bytes: float  # gradient tensors handed to all-reduce / reduce-scatter (full size S)
    param_bytes: float  # parameter tensors all-gathered (full size S)
    bus_bytes: float  # what the ring sends per rank for all of it
    calls: int


@dataclass(frozen=True)
class CommEstimate:
    bytes_per_rank: float  # bus bytes sent per optimizer step
    bus_bandwidth_gbps: float  # effective, GB/s
    comm_s: float  # if nothing overlapped
    exposed_s: float  # what adds to the step time
    traffic: Traffic | None = None


def bus_bandwidth_gbps(hw: HardwareConfig) -> float:
    """Effective ring bus bandwidth per rank: the slowest of the intra- and inter-node paths."""
    if hw.interconnect == "nvlink":
        intra = hw.intra_node_bandwidth_gbps * LINK_EFFICIENCY["nvlink"]
    else:
        no_p2p = hw.nccl_env.get("NCCL_P2P_DISABLE") == "1"
        link = hw.intra_node_bandwidth_gbps or PCIE4_X16_GBPS
        intra = link * LINK_EFFICIENCY["pcie_no_p2p" if no_p2p else "pcie_p2p"]
    if hw.num_nodes > 1 and hw.inter_node_bandwidth_gbps:
        # one ring per NIC: per-node network bandwidth is the ring's bus bandwidth ceiling
        return min(intra, hw.inter_node_bandwidth_gbps * LINK_EFFICIENCY["network"])
    return intra


def step_traffic(
    strategy: str,
    params: int,
    world: int,
    accum: int,
    grad_elem_bytes: int,
    param_elem_bytes: int,
    bucket_bytes: float = 25e6,
    gloo: bool = False,
) -> Traffic:
    """The collectives of one optimizer step of `strategy` (see the module docstring)."""
    if world <= 1:
        return Traffic(0.0, 0.0, 0.0, 0)
    f = (world - 1) / world
    grads, gathered = params * grad_elem_bytes, params * param_elem_bytes
    rs_factor = 2 * f if gloo else f  # gloo's reduce-scatter is an all-reduce
    buckets = max(1, math.ceil(params * 4 / bucket_bytes))  # buckets are sized in fp32 grads
    if strategy in ("ddp", "zero1"):
        return Traffic(grads, 0.0, 2 * f * grads, buckets)
    if strategy == "zero2":
        bus = accum * rs_factor * grads + f * gathered
        return Traffic(accum * grads, gathered, bus, accum * buckets + 1)
    # fsdp2 / zero3: forward + backward all-gathers every micro-step, one reduce-scatter
    bus = accum * 2 * f * gathered + rs_factor * grads
    return Traffic(grads, accum * 2 * gathered, bus, 2 * accum + buckets)


def overlappable_share(strategy: str) -> float:
    """Share of the step's compute that the strategy's communication can hide behind."""
    return 1.0 if strategy in ("fsdp2", "zero3") else BACKWARD_SHARE


def estimate_comm(
    hw: HardwareConfig,
    strategy: str,
    params: int,
    world: int,
    accum: int,
    bf16: bool,
    compute_s: float,
    bucket_bytes: float = 25e6,
    bandwidth_gbps: float | None = None,
    grad_elem_bytes: int = 4,
    link: Link | None = None,
    overlap: bool = True,
) -> CommEstimate:
    """Exposed communication time of one optimizer step whose compute takes `compute_s`.

    `bf16`: parameters are gathered in bf16; `grad_elem_bytes`: 2 with
    parallel.grad_comm_dtype=bf16. `link` (measured) wins over `bandwidth_gbps` and the preset.
    `overlap=False`: the device cannot run communication beside compute (CPU).
    """
    if link is None:
        bw = bandwidth_gbps if bandwidth_gbps is not None else bus_bandwidth_gbps(hw)
        link = Link(bw)
    gloo = hw.gpu_name == "cpu"
    traffic = step_traffic(
        strategy, params, world, accum, grad_elem_bytes, 2 if bf16 else 4, bucket_bytes, gloo
    )
    if traffic.bus_bytes == 0 or link.bus_gbps <= 0:
        return CommEstimate(traffic.bus_bytes, link.bus_gbps, 0.0, 0.0, traffic)
    comm = link.seconds(traffic.bus_bytes, traffic.calls)
    if not overlap:
        return CommEstimate(traffic.bus_bytes, link.bus_gbps, comm, comm, traffic)
    last = min(bucket_bytes / 4 * grad_elem_bytes, traffic.grad_bytes)
    tail = link.seconds(last * 2 * (world - 1) / world, 1)  # the last bucket: nothing hides it
    hidden = compute_s * overlappable_share(strategy)
    return CommEstimate(
        traffic.bus_bytes, link.bus_gbps, comm, max(comm - hidden, min(tail, comm)), traffic
    )


def predicted_efficiency(step_compute_s: float, exposed_s: float) -> float:
    """Weak-scaling efficiency: tokens/s(N) / (N x tokens/s(1)) when per-rank work is constant."""
    return step_compute_s / (step_compute_s + exposed_s) if step_compute_s > 0 else 0.0


def fit_link(sizes_bytes: list[float], seconds: list[float], world: int) -> Link:
    """Latency and bus bandwidth from an all-reduce sweep (least squares of time on bus bytes)."""
    bus = [s * 2 * (world - 1) / world for s in sizes_bytes]
    n = len(bus)
    mx, my = sum(bus) / n, sum(seconds) / n
    sxx = sum((x - mx) ** 2 for x in bus)
    slope = sum((x - mx) * (y - my) for x, y in zip(bus, seconds, strict=True)) / sxx
    if slope <= 0:  # flat (noise): the largest message's rate
        return Link(bus[-1] / seconds[-1] / 1e9, 0.0, "measured")
    return Link(1 / slope / 1e9, max(0.0, my - slope * mx), "measured")
