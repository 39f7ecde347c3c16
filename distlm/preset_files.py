"""Where the yaml presets live and how one is read raw (no schema, no omegaconf).

The bottom of the config layer: `config_loader` (which validates and merges presets) and
`hardware.presets` (which picks a hardware preset for `hardware=auto`) both read presets through
this module, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


class PresetError(ValueError):
    """A preset file is missing or is not a yaml mapping; the message names the file."""


def available_presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / group).glob("*.yaml"))


def preset_path(group: str, name: str) -> Path:
    return CONFIG_ROOT / group / f"{name}.yaml"


def read_preset(group: str, name: str) -> dict:
    """The preset's yaml as a nested dict; PresetError if it is not a readable mapping."""
    path = preset_path(group, name)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise PresetError(f"{path}: cannot read the preset ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise PresetError(f"{path}: not valid yaml: {e}") from None
    if not isinstance(tree, dict):
        raise PresetError(
            f"{path}: expected a mapping of config sections, got {type(tree).__name__}"
        )
    return tree
