"""The data pipeline: tokenizer, pre-tokenized Arrow shards, and the world-size-free loader.

    data_tools (tokenizer, pretokenize, inspect, demo_data)  ->  dataset dir  ->  loaders below

Only `DataError` is imported eagerly: the loaders pull in torch and the shards pyarrow, which
pre-tokenization workers (that import this package) do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distlm.data.errors import DataError

if TYPE_CHECKING:
    from distlm.config import DataConfig
    from distlm.data.tokenizer import Tokenizer

_LAZY = {
    "TrainLoader": "distlm.data.loader",
    "ValLoader": "distlm.data.loader",
    "build_train_loader": "distlm.data.loader",
    "build_val_loader": "distlm.data.loader",
    "loader_args": "distlm.data.loader",
    "Tokenizer": "distlm.data.tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distlm.data' has no attribute {name!r}")


def load_tokenizer(dataset_path: str) -> Tokenizer:
    """The tokenizer of a dataset dir, or of the first dataset of a mixture (all must share it)."""
    from distlm.data.manifest import TOKENIZER_NAME
    from distlm.data.tokenizer import Tokenizer

    dirs, _ = _manifests(dataset_path)
    return Tokenizer(dirs[0] / TOKENIZER_NAME)


def dataset_vocab_size(cfg: DataConfig) -> int:
    """Vocab size recorded in the (first) training manifest, to suggest model.vocab_size."""
    _, manifests = _manifests(cfg.path, cfg.train_split)
    return manifests[0].vocab_size


def _manifests(dataset_path: str, split: str = "train") -> tuple[list, list]:
    from pathlib import Path

    from distlm.data.manifest import read_manifest
    from distlm.data.mixture import parse_mixture

    dirs = [Path(p) for p, _ in parse_mixture(dataset_path)]
    manifests = [read_manifest(d / split) for d in dirs]
    for d, m in zip(dirs[1:], manifests[1:], strict=True):
        if m.tokenizer["sha256"] != manifests[0].tokenizer["sha256"]:
            raise DataError(
                f"{d} and {dirs[0]} were made with different tokenizers; "
                "a mixture needs one tokenizer"
            )
    return dirs, manifests


__all__ = [
    "DataError",
    "Tokenizer",
    "TrainLoader",
    "ValLoader",
    "build_train_loader",
    "build_val_loader",
    "loader_args",
    "dataset_vocab_size",
    "load_tokenizer",
]
