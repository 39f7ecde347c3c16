"""A Hugging Face folder's weights: `model.safetensors`, or shards with an index above a limit.

    model.safetensors                         when everything fits in `max_shard_bytes`
    model-00001-of-00003.safetensors ...      otherwise, filled in order, and
    model.safetensors.index.json   {"metadata": {"total_size"}, "weight_map": {name: file}}

The layout and the `{"format": "pt"}` metadata are what `transformers.from_pretrained` expects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from distlm.export.errors import ExportError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS |= {"GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5e9 bytes, '500MiB' -> 500 * 2**20, '1000' -> 1000 (Hugging Face's units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS or int(m.group(1)) <= 0:
        raise ExportError(
            f"--max-shard-size {text!r}: expected a positive size such as 5GB, 500MB or 2GiB"
        )
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Names grouped in order so each group stays under max_bytes (a bigger tensor goes alone)."""
    groups, size = [[]], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def save_folder(
    tensors: dict[str, torch.Tensor], folder: Path, max_bytes: int, metadata: dict[str, str]
) -> list[str]:
    """Write the weights into `folder` (which exists); returns the file names written."""
    from safetensors.torch import save_file

    meta = {"format": "pt", **metadata}
    groups = _shards(tensors, max_bytes)
    if len(groups) == 1:
        save_file(tensors, str(folder / SINGLE), metadata=meta)
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    for name, group in zip(names, groups, strict=True):
        save_file({k: tensors[k] for k in group}, str(folder / name), metadata=meta)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: name for name, group in zip(names, groups, strict=True) for k in group},
    }
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, INDEX]


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder's safetensors file(s), on the CPU."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / INDEX).exists():
        try:
            files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise ExportError(f"{folder / INDEX}: unreadable index ({e})") from None
    elif (folder / SINGLE).exists():
        files = [SINGLE]
    else:
        raise ExportError(
            f"{folder}: no {SINGLE} or {INDEX}; expected a Hugging Face model folder with "
            f"safetensors weights (convert .bin weights with transformers' save_pretrained)"
        )
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(str(folder / name)))
        except Exception as e:  # safetensors raises its own SafetensorError and OSError
            raise ExportError(f"{folder / name}: unreadable safetensors file ({e})") from None
    return tensors
