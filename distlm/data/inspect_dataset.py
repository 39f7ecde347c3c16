"""What `python -m data_tools.inspect` shows: manifest summary, checksum verification, samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distlm.data.errors import DataError
from distlm.data.manifest import MANIFEST_NAME, TOKENIZER_NAME, read_manifest
from distlm.data.shards import open_shard
from distlm.data.tokenizer import Tokenizer


def dataset_splits(dataset_dir: Path) -> list[str]:
    splits = (
        sorted(p.name for p in dataset_dir.iterdir() if (p / MANIFEST_NAME).is_file())
        if dataset_dir.is_dir()
        else []
    )
    if not splits:
        raise DataError(f"{dataset_dir}: no split with a {MANIFEST_NAME} (not a finished dataset)")
    return sorted(splits, key=lambda s: s != "train")


def describe(dataset_dir: Path) -> str:
    lines = [f"dataset {dataset_dir}"]
    for split in dataset_splits(dataset_dir):
        m = read_manifest(dataset_dir / split)
        lines.append(
            f"  {split:<6} {len(m.shards):>5} shards {m.total_documents:>12,} documents "
            f"{m.total_tokens:>15,} tokens  {m.dtype}"
        )
    m = read_manifest(dataset_dir / dataset_splits(dataset_dir)[0])
    t = m.tokenizer
    lines.append(
        f"  tokenizer vocab {t['vocab_size']} sha256 {t['sha256'][:16]}... "
        f"bos {t['bos_id']} eos {t['eos_id']} pad {t['pad_id']}"
    )
    keys = ("bytes", "documents", "empty", "invalid_utf8", "bad_lines")
    totals = {k: sum(s.get(k, 0) for s in m.sources) for k in keys}
    lines.append(
        f"  sources {len(m.sources)} files: " + ", ".join(f"{k} {v:,}" for k, v in totals.items())
    )
    lines.append(f"  created by: {m.created_by}")
    return "\n".join(lines)


def verify(dataset_dir: Path) -> int:
    """What `data.verify_checksums=true` checks before step 0, for every split: tokenizer, shard
    sizes and sha256, token ids below the vocab size. DataError on the first problem; returns
    the number of shards."""
    from distlm.data.dataset import open_split

    splits = [open_split(dataset_dir, s, None, True) for s in dataset_splits(dataset_dir)]
    return sum(len(s.manifest.shards) for s in splits)


def sample_documents(
    dataset_dir: Path, split: str, count: int, seed: int = 0
) -> list[tuple[str, int, str]]:
    """`count` random documents: (shard file, row, decoded text without the eos)."""
    m = read_manifest(dataset_dir / split)
    tok = Tokenizer(dataset_dir / TOKENIZER_NAME)
    rng = np.random.default_rng(seed)
    out = []
    nonempty = [e for e in m.shards if e["documents"]]
    for _ in range(count if nonempty else 0):
        entry = nonempty[int(rng.integers(len(nonempty)))]
        values, offsets = open_shard(dataset_dir / split / entry["file"], m.np_dtype)
        row = int(rng.integers(entry["documents"]))
        ids = values[offsets[row] : offsets[row + 1] - 1]
        out.append((entry["file"], row, tok.decode(ids)))
    return out
