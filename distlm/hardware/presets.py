"""`hardware=auto`: pick a `configs/hardware/` preset from detection and say why.

    args, why = expand_auto(["model=500m", "hardware=auto"])   # -> [..., "hardware=1x4090"]

The preset is chosen by GPU model; the detected GPU count and node count override the preset's
(`hardware.gpus_per_node=N`, `hardware.num_nodes=N`) so a 4x 4090 box uses the 4090 figures at W=4.
"""

from __future__ import annotations

from dataclasses import dataclass

from distlm.hardware.detect import Detected, detect
from distlm.preset_files import available_presets, read_preset

# GPU-name keyword -> (single-GPU preset, multi-GPU preset); first match wins
_BY_NAME = (
    ("4070", "1x4070", "1x4070"),
    ("4090", "1x4090", "1x4090"),
    ("5090", "1x5090", "8x5090-pcie"),
    ("h200", "1xh200", "1xh200"),
    ("h100", "8xh100-nvlink", "8xh100-nvlink"),
)
_MULTI_NODE = {"8xh100-nvlink": "2x8xh100"}


@dataclass(frozen=True)
class Choice:
    preset: str
    overrides: list[str]  # dotlist entries that adapt the preset to what was detected
    reasons: list[str]

    def explain(self) -> str:
        extra = f" with {' '.join(self.overrides)}" if self.overrides else ""
        lines = [f"hardware=auto -> hardware={self.preset}{extra}"]
        return "\n".join(lines + [f"  because {r}" for r in self.reasons])


def _closest_by_memory(det: Detected) -> str:
    """Unknown GPU: the single-GPU preset whose memory is nearest below (never above) the card's."""
    mem = det.gpus[0].memory_gb
    fits = []
    for name in ("1x4070", "1x4090", "1x5090", "1xh200"):
        preset_mem = float(read_preset("hardware", name)["hardware"]["memory_gb"])
        if preset_mem <= mem * 1.02:
            fits.append((preset_mem, name))
    return max(fits)[1] if fits else "1x4070"


def choose(det: Detected) -> Choice:
    """Map detection to a preset plus overrides, with the reasons in words."""
    reasons = list(det.notes)
    if det.cpu_only:
        return Choice("cpu", [], reasons + ["no NVIDIA GPU was found"])
    gpu = det.gpus[0]
    count = det.gpus_per_node
    name = gpu.name.lower()
    match = next((m for m in _BY_NAME if m[0] in name), None)
    if match is None:
        preset = _closest_by_memory(det)
        reasons.append(
            f"{gpu.name} has no preset; {preset} is the nearest by memory "
            f"({gpu.memory_gb:.0f} GB): check peak_bf16_tflops"
        )
    else:
        preset = match[1] if count == 1 else match[2]
        reasons.append(f"GPU 0 is {gpu.name} ({gpu.memory_gb:.1f} GB, compute {gpu.compute_cap})")
    if det.num_nodes > 1 and preset in _MULTI_NODE:
        preset = _MULTI_NODE[preset]
    assert preset in available_presets("hardware"), preset
    overrides = [f"hardware.gpus_per_node={count}", f"hardware.num_nodes={det.num_nodes}"]
    if count > 1:
        overrides += _interconnect_overrides(det)
    return Choice(preset, overrides, reasons)


def _interconnect_overrides(det: Detected) -> list[str]:
    """Detected topology wins over the preset's: PCIe without P2P must not be run as NVLink."""
    out = [f"hardware.interconnect={det.topology.interconnect}"]
    if det.topology.p2p is False:
        out.append("hardware.nccl_env.NCCL_P2P_DISABLE=1")
    return out


def expand_auto(args: list[str], det: Detected | None = None) -> tuple[list[str], str | None]:
    """Replace `hardware=auto` by the chosen preset; its overrides go first so the user's win."""
    if "hardware=auto" not in args:
        return list(args), None
    choice = choose(det or detect())
    rest = [a for a in args if a != "hardware=auto"]
    return [f"hardware={choice.preset}", *choice.overrides, *rest], choice.explain()
