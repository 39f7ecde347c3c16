"""`manifest.json` of one split: what a dataset directory holds and how it was made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distlm.data import atomic_files
from distlm.data.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.model"  # copy of the tokenizer inside each dataset directory
TOKENIZER_CARD_NAME = "tokenizer_card.json"  # tokenizer.json before: Hugging Face's file name


@dataclass
class Manifest:
    split: str
    tokenizer: dict  # {path, sha256, vocab_size, bos_id, eos_id, pad_id}
    dtype: str  # uint16 | uint32
    shards: list[dict]  # [{file, tokens, documents, bytes, sha256, max_token_id}]; max_token_id
    # is absent in manifests written before it was recorded (then the loader scans or guards)
    sources: list[dict]  # [{path, bytes, documents, text_bytes, tokens, empty, ...}], whole run
    created_by: str = ""  # the command line
    fingerprint: str = ""  # sha256 of everything that decides the shards' bytes
    format_version: int = FORMAT_VERSION
    total_tokens: int = 0
    total_documents: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])


def write_manifest(split_dir: Path, manifest: Manifest) -> None:
    manifest.total_tokens = sum(s["tokens"] for s in manifest.shards)
    manifest.total_documents = sum(s["documents"] for s in manifest.shards)
    atomic_files.write_json(split_dir / MANIFEST_NAME, asdict(manifest))


def read_manifest(split_dir: Path) -> Manifest:
    path = split_dir / MANIFEST_NAME
    if not path.is_file():
        parent = split_dir.parent
        splits = (
            sorted(p.name for p in parent.iterdir() if (p / MANIFEST_NAME).is_file())
            if parent.is_dir()
            else []
        )
        raise DataError(
            f"{path}: missing; splits with a manifest in {parent}: {splits} "
            "(an interrupted pretokenize run writes them last: rerun it)"
        )
    obj = atomic_files.read_json(path, "dataset manifest written by data_tools.pretokenize")
    if obj.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {obj.get('format_version')!r}, expected {FORMAT_VERSION}; "
            "re-run data_tools.pretokenize with this version of distlm"
        )
    try:
        manifest = Manifest(**obj)
        np.dtype(manifest.dtype)
        for key in ("sha256", "vocab_size"):
            manifest.tokenizer[key]
        for shard in manifest.shards:
            shard["file"], shard["tokens"], shard["bytes"], shard["sha256"]
    except (TypeError, KeyError) as e:
        raise DataError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    return manifest
