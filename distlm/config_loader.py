"""Compose a `Config` from presets and CLI overrides.

    load_config(["model=124m", "hardware=1x4090", "recipe=pretrain", "train.lr=3e-4"])

Order: dataclass defaults <- configs/recipe/<r>.yaml <- configs/model/<m>.yaml <-
configs/hardware/<h>.yaml <- dotlist overrides. Every key is checked against the schema first, so a
typo fails with the file or argument that holds it and the nearest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distlm.config import Config, ConfigError, validate
from distlm.config_hints import suggest_keys
from distlm.preset_files import CONFIG_ROOT, PresetError, available_presets, read_preset

__all__ = ["CONFIG_ROOT", "available_presets", "load_config", "save_config", "to_yaml"]
PRESET_GROUPS = ("recipe", "model", "hardware")  # merge order: later groups win
DEFAULT_PRESETS = {"recipe": "pretrain", "model": "tiny", "hardware": "cpu"}


def _schema_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Flat map 'a.b' -> dataclass field type, for every leaf of the tree."""
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys.update(_schema_keys(type(default), name + "."))
        else:
            keys[name] = f.type
    return keys


SCHEMA_KEYS = _schema_keys(Config)


def _check_key(key: str, where: str) -> None:
    if key in SCHEMA_KEYS or any(key.startswith(k + ".") for k in SCHEMA_KEYS if "env" in k):
        return
    guesses = suggest_keys(key, list(SCHEMA_KEYS))
    hint = f"; did you mean {' or '.join(guesses)}?" if guesses else ""
    raise ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not name.endswith("nccl_env"):
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


def _load_preset(group: str, name: str) -> dict:
    path = CONFIG_ROOT / group / f"{name}.yaml"
    if not path.exists():
        names = available_presets(group)
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"no {group} preset '{name}' ({path}); available: {names}{hint}")
    try:
        tree = read_preset(group, name)
    except PresetError as e:
        raise ConfigError(str(e)) from None
    for key in _flatten(tree):
        _check_key(key, str(path))
    return tree


def _parse_overrides(args: list[str]) -> tuple[dict[str, str], list[str]]:
    presets, dotlist = {}, []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(
                f"argument '{arg}' is not key=value (e.g. train.lr=3e-4 or model=124m)"
            )
        key, _ = arg.split("=", 1)
        key = key.lstrip("+")
        if key in PRESET_GROUPS:
            presets[key] = arg.split("=", 1)[1]
        else:
            _check_key(key, f"command-line argument '{arg}'")
            value = arg.split("=", 1)[1]
            dotlist.append(f"{key}=" + (value if value else "''"))  # `key=` means ""
    return presets, dotlist


def load_config(args: list[str] | None = None) -> Config:
    """Presets and overrides -> a validated plain `Config` (no omegaconf past this point).

    `hardware=auto` is replaced by the preset that detection picks; rank 0 prints why.
    """
    args = list(args or [])
    if "hardware=auto" in args:
        from distlm.hardware import expand_auto

        args, why = expand_auto(args)
        if os.environ.get("RANK", "0") == "0":
            print(why, flush=True)
    presets, dotlist = _parse_overrides(args)
    chosen = {**DEFAULT_PRESETS, **presets}
    merged = OmegaConf.structured(Config)
    try:
        for group in PRESET_GROUPS:
            merged = OmegaConf.merge(merged, _load_preset(group, chosen[group]))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {e.msg if hasattr(e, 'msg') else e}") from None
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
