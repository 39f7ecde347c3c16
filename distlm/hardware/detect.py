"""What hardware is this? GPUs, their interconnect, nodes, or a CPU-only machine.

Sources, in order of trust: NVML (if `pynvml` is installed), `nvidia-smi` text output, torchrun /
slurm environment variables. Parsing is separate from running the tools, so the parsers are tested
on real-format outputs kept in `tests/fixtures/nvidia_smi/`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

QUERY_ARGS = ["--query-gpu=name,memory.total,compute_cap", "--format=csv"]


@dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA GeForce RTX 4090"
    memory_mib: int  # nvidia-smi memory.total
    compute_cap: str  # e.g. "8.9"

    @property
    def memory_gb(self) -> float:
        return self.memory_mib * 2**20 / 1e9


@dataclass(frozen=True)
class Topology:
    interconnect: str  # nvlink | pcie | none (one GPU)
    links: dict[tuple[int, int], str]  # (i, j) -> "NV18" | "PIX" | "PXB" | "PHB" | "NODE" | "SYS"
    p2p: bool | None  # peer-to-peer reads possible between all pairs; None = not known

    def describe(self) -> str:
        kinds = sorted(set(self.links.values()))
        p2p = {True: "P2P on", False: "P2P off", None: "P2P unknown"}[self.p2p]
        return f"{self.interconnect} ({', '.join(kinds) or 'single GPU'}; {p2p})"


@dataclass
class Detected:
    gpus: list[GpuInfo]
    topology: Topology
    num_nodes: int
    gpus_per_node: int  # processes per node the launcher asked for, else GPUs seen
    notes: list[str] = field(default_factory=list)  # how each fact was found

    @property
    def cpu_only(self) -> bool:
        return not self.gpus


def parse_query_gpu(text: str) -> list[GpuInfo]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv`."""
    gpus = []
    for line in text.strip().splitlines():
        if not line.strip() or line.lower().startswith("name"):
            continue  # header: "name, memory.total [MiB], compute_cap"
        name, mem, cap = (part.strip() for part in line.rsplit(",", 2))
        gpus.append(GpuInfo(name, int(mem.split()[0]), cap))
    return gpus


def parse_topo_matrix(text: str) -> dict[tuple[int, int], str]:
    """Parse the GPU x GPU block of `nvidia-smi topo -m` (or `topo -p2p r`) into pair -> code."""
    rows = [
        ln
        for ln in text.splitlines()
        if re.match(r"^\s*GPU\d+\s", ln) and not ln.split()[1].startswith("GPU")
    ]  # no header
    links: dict[tuple[int, int], str] = {}
    n = len(rows)
    for i, row in enumerate(rows):
        cells = row.split()[1 : n + 1]  # drop the row label; the GPU columns come first
        for j, cell in enumerate(cells):
            if i != j:
                links[(i, j)] = cell
    return links


def classify(
    links: dict[tuple[int, int], str], p2p_links: dict | None, names: list[str]
) -> Topology:
    """NVLink if every pair has an NV# link; P2P from `topo -p2p r` if given, else by GPU kind."""
    if not links:
        return Topology("none", {}, None)
    nvlink = all(code.startswith("NV") for code in links.values())
    if p2p_links:
        p2p: bool | None = all(code == "OK" for code in p2p_links.values())
    elif nvlink:
        p2p = True
    elif names and all("geforce" in n.lower() for n in names):
        # NVIDIA's GeForce drivers report P2P "GNS" (GPU not supported) from the RTX 40 series on
        p2p = False
    else:
        p2p = None
    return Topology("nvlink" if nvlink else "pcie", links, p2p)


def nodes_from_env(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(nodes, processes per node, source) from torchrun or slurm variables, if launched so."""
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:  # torchrun sets both
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        return max(1, world // local), local, "torchrun WORLD_SIZE / LOCAL_WORLD_SIZE"
    if "SLURM_JOB_NUM_NODES" in env or "SLURM_NNODES" in env:
        nodes = int(env.get("SLURM_JOB_NUM_NODES") or env["SLURM_NNODES"])
        per = env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE", "")
        per = per.split(":")[-1] or env.get("SLURM_NTASKS_PER_NODE", "1")  # "h100:8" -> 8
        return nodes, int(per.split("(")[0]), "slurm SLURM_JOB_NUM_NODES / SLURM_GPUS_ON_NODE"
    return None


Runner = Callable[[list[str]], str | None]


def run_tool(cmd: list[str]) -> str | None:
    """Run a tool and return stdout, or None if it is missing or fails (no GPU, no driver)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _from_nvml() -> tuple[list[GpuInfo], dict, dict] | None:
    """GPUs and pairwise NVLink / P2P status from NVML, when `pynvml` is importable."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:  # not installed, or no driver: fall back to nvidia-smi
        return None
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    gpus = []
    for h in handles:
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        gpus.append(
            GpuInfo(name, pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20, f"{major}.{minor}")
        )
    links, p2p = {}, {}
    read = pynvml.NVML_P2P_CAPS_INDEX_READ
    for i, a in enumerate(handles):
        for j, b in enumerate(handles):
            if i != j:
                ok = pynvml.nvmlDeviceGetP2PStatus(a, b, read) == pynvml.NVML_P2P_STATUS_OK
                p2p[(i, j)] = "OK" if ok else "NS"
                level = pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b)
                links[(i, j)] = "PIX" if level <= pynvml.NVML_TOPOLOGY_SINGLE else "SYS"
    pynvml.nvmlShutdown()
    return gpus, links, p2p


def detect(
    run: Runner = run_tool, env: Mapping[str, str] | None = None, use_nvml: bool = True
) -> Detected:
    """Detect GPUs, interconnect and node layout; a machine without NVIDIA tools is CPU-only."""
    env = os.environ if env is None else env
    notes: list[str] = []
    nvml = _from_nvml() if use_nvml else None
    if nvml:
        gpus, links, p2p_links = nvml
        notes.append(f"NVML: {len(gpus)} GPU(s)")
    else:
        text = run(["nvidia-smi", *QUERY_ARGS])
        gpus = parse_query_gpu(text) if text else []
        notes.append(
            f"nvidia-smi --query-gpu: {len(gpus)} GPU(s)"
            if text
            else "no nvidia-smi / driver: CPU only"
        )
        links = parse_topo_matrix(run(["nvidia-smi", "topo", "-m"]) or "") if len(gpus) > 1 else {}
        p2p_text = run(["nvidia-smi", "topo", "-p2p", "r"]) if len(gpus) > 1 else None
        p2p_links = parse_topo_matrix(p2p_text) if p2p_text else {}
    topo = classify(links, p2p_links, [g.name for g in gpus])
    if len(gpus) > 1:
        notes.append(f"interconnect: {topo.describe()}")
    layout = nodes_from_env(env)
    if layout:
        nodes, per_node, source = layout
        notes.append(f"{nodes} node(s) x {per_node} process(es) from {source}")
    else:
        nodes, per_node = 1, max(1, len(gpus))
    return Detected(gpus, topo, nodes, per_node, notes)
