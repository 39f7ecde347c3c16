"""Hardware detection and `hardware=auto` preset selection."""

from distlm.hardware.detect import Detected, GpuInfo, Topology, detect
from distlm.hardware.presets import Choice, choose, expand_auto

__all__ = ["Choice", "Detected", "GpuInfo", "Topology", "choose", "detect", "expand_auto"]
