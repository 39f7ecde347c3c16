"""Load a DCP checkpoint without running arbitrary pickles.

`torch.distributed.checkpoint.load` reads tensors with `torch.load(weights_only=True)` but
unpickles the `.metadata` file and non-tensor entries (optimizer param groups) with plain pickle,
so a crafted checkpoint could run code. `safe_dcp_load` closes both: the metadata goes through an
unpickler that admits only DCP's own metadata classes, torch dtypes / Size and paths, and every
non-tensor entry through `torch.load(weights_only=True)`.

    safe_dcp_load(state, path)      # instead of dcp.load(state, checkpoint_id=str(path))
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_SAFE_MODULES = ("torch.distributed.checkpoint.", "pathlib", "collections")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_SAFE_MODULES) or module == "torch.distributed.checkpoint":
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        if (module, name) in (("torch", "Size"), ("torch.serialization", "_get_layout")):
            return super().find_class(module, name)  # a tuple type; str -> torch.layout
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}: refused")


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def safe_dcp_load(state: dict[str, Any], path: Path) -> None:
    """`dcp.load(state, checkpoint_id=path)` with weights-only deserialisation throughout."""
    dcp.load(
        state, storage_reader=SafeFileSystemReader(str(path)), planner=WeightsOnlyLoadPlanner()
    )
