"""The data tools' command lines under real failures: what the user reads (one line, exit status 2)
and what is left on disk; one --text-field per input when sources name their text differently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools import pretokenize as pretokenize_cli
from data_tools import tokenizer as tokenizer_cli
from data_tools.cli_common import run_main
from distlm.data import DataError
from distlm.data.manifest import read_manifest
from distlm.data.readers import ReadOptions, resolve_inputs
from distlm.data.shards import open_shard
from distlm.data.tokenizer import Tokenizer, TokenizerTrainOptions, train_tokenizer


def _cli(main, args: list, capsys) -> tuple[int, str]:
    """Run a data tool's main as `python -m data_tools.X` does: (exit status, stderr)."""
    code = run_main(main, [str(a) for a in args])
    return code, capsys.readouterr().err


def _documents(split_dir: Path) -> list[np.ndarray]:
    m = read_manifest(split_dir)
    docs = []
    for entry in m.shards:
        values, offsets = open_shard(split_dir / entry["file"], m.np_dtype)
        docs += [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return docs


@pytest.fixture
def tok(tiny_dataset) -> Path:
    return tiny_dataset / "tokenizer.model"


def _mixed_sources(root: Path) -> tuple[Path, Path, list[str]]:
    """a.jsonl with its text under "text", b.parquet under "content"; the documents, in order."""
    docs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]
    jsonl = root / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:20]))
    parquet = root / "b.parquet"
    pq.write_table(pa.table({"content": docs[20:], "id": list(range(20))}), parquet)
    return jsonl, parquet, docs


# ---- a failed pre-tokenize leaves no empty train/ and val/ --------------------------------


def test_failed_pretokenize_leaves_no_empty_split_folders(tmp_path, tok, capsys):
    jsonl, parquet, _ = _mixed_sources(tmp_path)
    out = tmp_path / "ds"
    args = [jsonl, parquet, "--tokenizer", tok, "--out", out, "--workers", 1, "--no-progress"]
    code, err = _cli(pretokenize_cli.main, args, capsys)  # b.parquet has no column "text"
    assert (code, err) == (
        2,
        f"error: {parquet}: no column 'text' (columns: ['content', 'id']); "
        "choose one with --text-field\n",
    )
    assert not out.exists()
    # a complete dataset replaced with --overwrite by a run that fails: no empty folders either
    assert _cli(pretokenize_cli.main, [jsonl, *args[2:]], capsys)[0] == 0
    assert (out / "train").is_dir() and (out / "val").is_dir()
    code, err = _cli(pretokenize_cli.main, [*args, "--overwrite"], capsys)
    assert code == 2 and "no column 'text'" in err
    assert not (out / "train").exists() and not (out / "val").exists()


# ---- one --text-field per input -----------------------------------------------------------


def test_one_text_field_per_input_reads_jsonl_and_parquet_together(tmp_path, tok, capsys):
    jsonl, parquet, docs = _mixed_sources(tmp_path)
    out = tmp_path / "ds"
    args = [jsonl, parquet, "--tokenizer", tok, "--out", out, "--workers", 1, "--no-progress"]
    code, err = _cli(
        pretokenize_cli.main, [*args, "--text-field", "text", "--text-field", "content"], capsys
    )
    assert (code, err) == (0, "")
    assert len(read_manifest(out / "train").sources) == 2
    texts = [Tokenizer(tok).decode(d[:-1]) for s in ("train", "val") for d in _documents(out / s)]
    assert sorted(texts) == sorted(docs)
    code, err = _cli(pretokenize_cli.main, [*args, *["--text-field", "text"] * 3], capsys)
    assert (code, err) == (
        2,
        "error: --text-field given 3 times for 2 inputs: give it once (for all inputs) or once "
        "per input, in the order of the inputs\n",
    )


def test_per_input_fields_keep_the_fingerprint_of_a_single_field(tmp_path):
    """Datasets made before per-input fields existed are still "already complete" on a rerun."""
    jsonl, _, _ = _mixed_sources(tmp_path)
    (single,) = resolve_inputs([str(jsonl)])
    assert single.key() == {"path": str(jsonl), "fmt": "jsonl", "bytes": jsonl.stat().st_size}
    (named,) = resolve_inputs([str(jsonl)], text_fields=["body"])
    assert named.key() == single.key() | {"text_field": "body"}
    with pytest.raises(DataError, match="matched by two inputs with different --text-field"):
        resolve_inputs([str(jsonl), str(tmp_path)], text_fields=["text", "body"])


# ---- a vocabulary too small (or too large) for the tokenizer's sample ------------------------


def _many_characters(root: Path, n: int = 600) -> Path:
    """Text using n distinct CJK characters, each often enough to need its own piece."""
    chars = [chr(0x4E00 + i) for i in range(n)]
    lines = ["".join(chars[(7 * r + j) % n] for j in range(n)) + " plain ascii" for r in range(40)]
    path = root / "cjk.txt"
    path.write_text("\n".join(lines))
    return path


def test_vocab_below_the_characters_of_the_sample_says_the_minimum_that_works(tmp_path, capsys):
    text = _many_characters(tmp_path)
    out = tmp_path / "tok.model"
    args = [text, "--out", out, "--train-threads", 1]
    code, err = _cli(tokenizer_cli.main, [*args, "--vocab-size", 512], capsys)
    size = text.stat().st_size
    assert (code, err) == (
        2,
        f"error: --vocab-size 512 is too small for {out}: the sample of {size:,} bytes "
        "(1 document) has 608 characters that character_coverage 0.9995 keeps, and with 256 "
        "byte pieces and 4 special ids the vocabulary needs at least 868 pieces. Pass "
        "--vocab-size 868 or more (a language model wants far more than its characters), or "
        "--character-coverage 0.98 (the least sentencepiece takes) to leave the rarest "
        "characters to byte pieces; --no-byte-fallback needs 256 fewer but turns unseen "
        "characters into <unk>\n",
    )
    assert not out.exists()
    assert _cli(tokenizer_cli.main, [*args, "--vocab-size", 868], capsys)[0] == 0
    assert Tokenizer(out).vocab_size == 868
    code, err = _cli(tokenizer_cli.main, [*args, "--character-coverage", 0.5], capsys)
    assert (code, err) == (
        2,
        "error: --character-coverage 0.5 must be in [0.98, 1.0] (sentencepiece's range)\n",
    )


def test_vocab_above_what_the_sample_supports_says_the_maximum(tmp_path):
    text = _many_characters(tmp_path, n=50)
    with pytest.raises(DataError, match=r"pass --vocab-size (\d+) or less") as e:
        train_tokenizer(
            resolve_inputs([str(text)]),
            tmp_path / "tok.model",
            ReadOptions(),
            TokenizerTrainOptions(vocab_size=100_000, train_threads=1),
        )
    assert str(e.value).startswith("--vocab-size 100000 is more than sentencepiece can make from")
