"""The demo dataset: the Python standard library's own `.py` sources, which every machine with
Python has. One document per file, files in sorted order, capped at `max_bytes`; a BPE tokenizer
trained on them; pre-tokenized with a small validation split. Idempotent: a complete dataset made
from the same files and settings is left as it is (a rerun takes about a second).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

from distlm.data import atomic_files
from distlm.data.manifest import TOKENIZER_CARD_NAME, TOKENIZER_NAME
from distlm.data.pretokenize import PretokenizeOptions, pretokenize, print_summary
from distlm.data.readers import InputFile, ReadOptions
from distlm.data.tokenizer import TokenizerTrainOptions, find_card, train_tokenizer

DEMO_MAX_BYTES = 30_000_000  # the whole 3.11 stdlib is ~29 MB of .py; ~8 M tokens at vocab 4096


def stdlib_sources(max_bytes: int = DEMO_MAX_BYTES) -> list[InputFile]:
    """The stdlib's .py files (no site-packages), sorted by relative path, up to max_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (
            p
            for p in root.rglob("*.py")
            if not {"site-packages", "dist-packages"} & set(p.parts) and p.is_file()
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    inputs, total = [], 0
    for p in files:
        size = p.stat().st_size
        if total + size > max_bytes:
            break
        inputs.append(InputFile(str(p), "txt", size))
        total += size
    return inputs


def prepare_demo_dataset(
    out_dir: str | Path = "data/demo",
    vocab_size: int = 4096,
    max_bytes: int = DEMO_MAX_BYTES,
    val_fraction: float = 0.015,
    shard_tokens: int = 2_000_000,
    workers: int = 0,
    progress: bool = True,
    verbose: bool = True,
) -> Path:
    """Make (or keep) the demo dataset in out_dir; return out_dir."""
    out = Path(out_dir)
    inputs = stdlib_sources(max_bytes)
    read = ReadOptions(txt_mode="file")
    tok_opts = TokenizerTrainOptions(vocab_size=vocab_size, sample_bytes=max_bytes)
    key = hashlib.sha256(
        json.dumps([[i.path, i.bytes] for i in inputs] + [vocab_size, max_bytes]).encode()
    ).hexdigest()
    card = out / TOKENIZER_CARD_NAME
    try:
        current = json.loads((find_card(out / TOKENIZER_NAME) or card).read_text()).get("demo_key")
    except (OSError, ValueError):
        current = None
    if current != key or not (out / TOKENIZER_NAME).is_file():
        tok_card = train_tokenizer(inputs, out / TOKENIZER_NAME, read, tok_opts)
        atomic_files.write_json(card, tok_card | {"demo_key": key})
    summary = pretokenize(
        PretokenizeOptions(
            tokenizer=str(out / TOKENIZER_NAME),
            inputs=inputs,
            out_dir=str(out),
            read=read,
            val_fraction=val_fraction,
            shard_tokens=shard_tokens,
            workers=workers,
            unit_bytes=1 << 20,
            overwrite=True,
            progress=progress,
            created_by=f"prepare_demo_dataset(vocab_size={vocab_size}, max_bytes={max_bytes})",
        )
    )
    if verbose:
        print_summary(summary)
    return out
