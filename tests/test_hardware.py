"""Hardware detection parsed from nvidia-smi outputs kept as fixtures; presets and hardware=auto."""

from pathlib import Path

import pytest

from distlm.config_loader import available_presets, load_config
from distlm.hardware import detect, expand_auto
from distlm.hardware.detect import nodes_from_env, parse_query_gpu, parse_topo_matrix

FIX = Path(__file__).parent / "fixtures" / "nvidia_smi"


def runner(query: str, topo: str = "", p2p: str = ""):
    def run(cmd: list[str]) -> str | None:
        if any("--query-gpu" in c for c in cmd):
            return (FIX / query).read_text()
        if cmd[-1] == "-m":
            return (FIX / topo).read_text() if topo else None
        return (FIX / p2p).read_text() if p2p else None

    return run


def test_query_gpu_parses_name_memory_and_compute_capability():
    gpus = parse_query_gpu((FIX / "query_8xh100.csv").read_text())
    assert len(gpus) == 8
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].memory_mib == 81559
    assert gpus[0].compute_cap == "9.0"


def test_topo_matrix_skips_header_and_affinity_columns():
    links = parse_topo_matrix((FIX / "topo_8x4090_pcie.txt").read_text())
    assert len(links) == 8 * 7
    assert links[(0, 1)] == "NODE" and links[(0, 7)] == "SYS"


@pytest.mark.parametrize(
    "query, topo, p2p, interconnect, p2p_on, preset",
    [
        (
            "query_8xh100.csv",
            "topo_8xh100_sxm.txt",
            "p2p_8xh100_ok.txt",
            "nvlink",
            True,
            "8xh100-nvlink",
        ),
        ("query_8x4090.csv", "topo_8x4090_pcie.txt", "", "pcie", False, "1x4090"),
        (
            "query_2x5090.csv",
            "topo_2x5090_pcie.txt",
            "p2p_2x5090_gns.txt",
            "pcie",
            False,
            "8x5090-pcie",
        ),
    ],
)
def test_detect_and_auto_preset(query, topo, p2p, interconnect, p2p_on, preset):
    det = detect(runner(query, topo, p2p), env={}, use_nvml=False)
    assert det.topology.interconnect == interconnect and det.topology.p2p is p2p_on
    args, why = expand_auto(["model=tiny", "hardware=auto"], det)
    assert args[0] == f"hardware={preset}" and "because" in why
    cfg = load_config(args)
    assert cfg.hardware.gpus_per_node == len(det.gpus)
    if not p2p_on:
        assert cfg.hardware.nccl_env["NCCL_P2P_DISABLE"] == "1"


def test_single_cards_and_unknown_gpu():
    assert expand_auto(["hardware=auto"], detect(runner("query_1x4070.csv"), {}, False))[0][0] == (
        "hardware=1x4070"
    )
    assert expand_auto(["hardware=auto"], detect(runner("query_1xh200.csv"), {}, False))[0][0] == (
        "hardware=1xh200"
    )
    args, why = expand_auto(["hardware=auto"], detect(runner("query_1xa6000.csv"), {}, False))
    assert args[0] == "hardware=1x5090" and "no preset" in why


def test_cpu_only_machine_and_launcher_layout():
    det = detect(lambda cmd: None, env={}, use_nvml=False)
    assert det.cpu_only and expand_auto(["hardware=auto"], det)[0][0] == "hardware=cpu"
    assert nodes_from_env({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"})[:2] == (2, 8)
    assert nodes_from_env({"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8"})[:2] == (4, 8)
    assert nodes_from_env({}) is None


@pytest.mark.parametrize("name", available_presets("hardware"))
def test_every_hardware_preset_loads_and_states_its_figures(name):
    cfg = load_config([f"hardware={name}"])
    text = (Path(__file__).parent.parent / "configs" / "hardware" / f"{name}.yaml").read_text()
    assert cfg.hardware.name == name
    if name != "cpu":  # a sourced peak, memory and a comment saying where they come from
        assert cfg.hardware.peak_bf16_tflops > 0 and cfg.hardware.memory_gb > 0
        assert "TFLOP/s" in text and (
            "whitepaper" in text or "datasheet" in text or "as in" in text or "1x5090.yaml" in text
        )
