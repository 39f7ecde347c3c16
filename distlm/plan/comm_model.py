"""Communication time per optimizer step from the strategy's collectives and the topology.

Ring collectives (Patarasuk & Yuan 2009; NCCL's "bus bandwidth", nccl-tests PERFORMANCE.md): over
W ranks, all-reduce moves 2(W-1)/W x S bytes per rank, reduce-scatter and all-gather (W-1)/W x S
each, so time = volume / bus bandwidth. Per optimizer step of A micro-batches (P params):
- ddp, zero1: one gradient all-reduce (torch DDP / `no_sync` skips the A-1 others);
- zero2: reduce-scatter of grads every micro-step + all-gather of the updated params;
- fsdp2, zero3: all-gather params in forward and again in backward every micro-step, and one
  reduce-scatter of grads (FSDP2 with `set_requires_gradient_sync(False)` on A-1 steps).
Overlap: gradient reduction runs during backward (DDP buckets, FSDP2 reduce-scatter per layer),
parameter gathers are prefetched during forward and backward, so only what exceeds the
overlappable compute is exposed, and never less than the last bucket, which nothing hides.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class CommEstimate:
    bytes_per_rank: float  # moved per optimizer step
    bus_bandwidth_gbps: float  # effective, GB/s
    comm_s: float  # if nothing overlapped
    exposed_s: float  # what adds to the step time


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


def step_volume(
    strategy: str, params: int, world: int, accum: int, bf16: bool
) -> tuple[float, int]:
    """(bytes each rank sends per optimizer step, number of collective calls)."""
    if world <= 1:
        return 0.0, 0
    f = (world - 1) / world
    grad_b = 2 if bf16 and strategy.startswith("zero") else 4  # FSDP2/DDP reduce in fp32
    param_b = 2 if bf16 else 4
    if strategy in ("ddp", "zero1"):
        return 2 * f * params * grad_b, 1
    if strategy == "zero2":
        return accum * f * params * grad_b + f * params * param_b, accum + 1
    # fsdp2 / zero3: forward + backward all-gathers every micro-step, one reduce-scatter
    return accum * 2 * f * params * param_b + f * params * grad_b, 2 * accum + 1


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
) -> CommEstimate:
    """Exposed communication time of one optimizer step whose compute takes `compute_s`."""
    volume, calls = step_volume(strategy, params, world, accum, bf16)
    bw = bandwidth_gbps if bandwidth_gbps is not None else bus_bandwidth_gbps(hw)
    if volume == 0 or bw <= 0:
        return CommEstimate(volume, bw, 0.0, 0.0)
    comm = volume / (bw * 1e9) + calls * LATENCY_S
    # gradients reduce during backward (2/3 of compute); prefetched gathers span all of it
    overlappable = compute_s * (1.0 if strategy in ("fsdp2", "zero3") else 2 / 3)
    tail = min(bucket_bytes, params * 4) * 2 * (world - 1) / world / (bw * 1e9)
    return CommEstimate(volume, bw, comm, max(comm - overlappable, tail))


def predicted_efficiency(step_compute_s: float, exposed_s: float) -> float:
    """Weak-scaling efficiency: tokens/s(N) / (N x tokens/s(1)) when per-rank work is constant."""
    return step_compute_s / (step_compute_s + exposed_s) if step_compute_s > 0 else 0.0
