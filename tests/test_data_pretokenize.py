"""Pre-tokenization: exact round trip on a real corpus, determinism at any worker count, kill -9
resume, and every bad input named by its message."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distlm.data import DataError
from distlm.data.demo_corpus import stdlib_sources
from distlm.data.encode_worker import is_validation
from distlm.data.manifest import read_manifest
from distlm.data.pretokenize import JOURNAL_NAME, PretokenizeOptions, pretokenize
from distlm.data.readers import ReadOptions, resolve_inputs
from distlm.data.shards import open_shard
from distlm.data.tokenizer import Tokenizer, TokenizerTrainOptions, card_path, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS_BYTES = 2_000_000  # a real corpus: the first ~2 MB of the stdlib's .py files


@pytest.fixture(scope="module")
def corpus():
    return stdlib_sources(CORPUS_BYTES)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory, corpus) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    train_tokenizer(corpus, path, ReadOptions(), TokenizerTrainOptions(vocab_size=512))
    return path


def _run(tokenizer_path, inputs, out, **kw) -> dict:
    kw = {
        "val_fraction": 0.1,
        "shard_tokens": 50_000,
        "workers": 1,
        "unit_bytes": 1 << 17,
        "progress": False,
    } | kw
    return pretokenize(PretokenizeOptions(str(tokenizer_path), inputs, str(out), **kw))


def _documents(split_dir: Path) -> list[np.ndarray]:
    m = read_manifest(split_dir)
    docs = []
    for entry in m.shards:
        values, offsets = open_shard(split_dir / entry["file"], m.np_dtype)
        docs += [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return docs


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_card_records_the_tokenizer(tokenizer_path):
    card = json.loads(card_path(tokenizer_path).read_text())
    assert card_path(tokenizer_path).name == "tok_card.json"  # never Hugging Face's tokenizer.json
    tok = Tokenizer(tokenizer_path)
    assert card["sha256"] == tok.sha256 and card["vocab_size"] == tok.vocab_size == 512
    assert card["special_ids"] == {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
    assert card["sample"]["documents"] > 100 and card["sample"]["bytes"] > 1_000_000


def test_decode_of_every_document_is_its_source_text(tmp_path, corpus, tokenizer_path):
    summary = _run(tokenizer_path, corpus, tmp_path / "ds", workers=2)
    tok = Tokenizer(tokenizer_path)
    texts = [Path(i.path).read_bytes().decode("utf-8", "replace") for i in corpus]
    texts = [t for t in texts if t.strip()]
    for split in ("train", "val"):
        expected = [t for t in texts if is_validation(t.encode(), 0.1) == (split == "val")]
        docs = _documents(tmp_path / "ds" / split)
        assert len(docs) == len(expected) and expected
        for doc, text in zip(docs, expected, strict=True):
            assert doc[-1] == tok.eos_id and tok.decode(doc[:-1]) == text
        m = read_manifest(tmp_path / "ds" / split)
        assert m.total_tokens == sum(len(d) for d in docs) == summary["splits"][split]["tokens"]
        assert m.dtype == "uint16" and m.tokenizer["sha256"] == tok.sha256
    assert sum(s["documents"] for s in summary["sources"]) == len(texts)
    assert (tmp_path / "ds" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()


def test_output_is_the_same_at_any_worker_count_and_rerun_is_a_noop(
    tmp_path, corpus, tokenizer_path
):
    _run(tokenizer_path, corpus, tmp_path / "w1", workers=1)
    _run(tokenizer_path, corpus, tmp_path / "w2", workers=2)
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "w1").rglob("*")}
    assert _run(tokenizer_path, corpus, tmp_path / "w1")["status"] == "already complete"
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "w1").rglob("*")}
    with pytest.raises(DataError, match="already holds a complete dataset.*--overwrite"):
        _run(tokenizer_path, corpus, tmp_path / "w1", val_fraction=0.2)


def test_kill_9_then_rerun_gives_the_same_bytes(tmp_path, tokenizer_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, inp in enumerate(stdlib_sources(CORPUS_BYTES)):
        (corpus / f"{i:05d}.txt").write_bytes(Path(inp.path).read_bytes())
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "data_tools.pretokenize",
        str(corpus),
        "--tokenizer",
        str(tokenizer_path),
        "--out",
        str(out),
        "--workers",
        "2",
        "--shard-tokens",
        "5000",
        "--unit-mb",
        "0.02",
        "--val-fraction",
        "0.05",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / JOURNAL_NAME).exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its workers
    proc.wait()
    assert (out / JOURNAL_NAME).exists() and not (out / "train" / "manifest.json").exists()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    resumed = _files(out)
    assert JOURNAL_NAME not in resumed and not any(".tmp-" in name for name in resumed)
    os.rename(out, tmp_path / "resumed")
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    assert _files(out) == resumed


# ---- bad input: each asserted by its message ------------------------------------------------


def _jsonl(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_invalid_utf8_and_empty_documents_are_counted(tmp_path, tokenizer_path):
    src = _jsonl(
        tmp_path / "a.jsonl",
        [
            '{"text": "hello world"}',
            b'{"text": "caf\xe9 ok"}',
            '{"text": "   "}',
            '{"text": ""}',
            '{"text": "bye"}',
        ],
    )
    txt = tmp_path / "b.txt"
    txt.write_bytes(b"para one\n\n \n\npara \xff two\n\n\n")
    summary = _run(
        tokenizer_path,
        resolve_inputs([str(src), str(txt)]),
        tmp_path / "ds",
        read=ReadOptions(txt_mode="blank-line"),
        val_fraction=0.0,
    )
    a, b = summary["sources"]
    assert (a["documents"], a["empty"], a["invalid_utf8"]) == (3, 2, 1)
    assert (b["documents"], b["empty"], b["invalid_utf8"]) == (2, 1, 1)
    tok = Tokenizer(tokenizer_path)
    texts = [tok.decode(d[:-1]) for d in _documents(tmp_path / "ds" / "train")]
    assert texts == ["hello world", "caf\ufffd ok", "bye", "para one", "para \ufffd two"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "ok"', "not valid JSON"),
        ('{"body": "ok"}', "no 'text' field (set it with --text-field)"),
        ('{"text": 3}', "field 'text' is int, expected a string"),
    ],
)
def test_bad_jsonl_line_is_named_by_file_and_line(tmp_path, tokenizer_path, line, message):
    src = _jsonl(tmp_path / "a.jsonl", ['{"text": "one"}', "", '{"text": "two"}', line])
    with pytest.raises(DataError) as e:
        _run(tokenizer_path, resolve_inputs([str(src)]), tmp_path / "ds")
    assert str(e.value) == f"{src}:4: {message} (pass --skip-bad to skip and count such lines)"
    summary = _run(
        tokenizer_path,
        resolve_inputs([str(src)]),
        tmp_path / "ds",
        read=ReadOptions(skip_bad=True),
        val_fraction=0.0,
    )
    assert summary["sources"][0]["bad_lines"] == 1 and summary["sources"][0]["documents"] == 2


def test_compressed_jsonl_and_parquet_are_read(tmp_path, tokenizer_path):
    import zstandard

    docs = [f"document number {i}\n  indented" for i in range(300)]
    data = "".join(json.dumps({"content": d}) + "\n" for d in docs).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    pq.write_table(
        pa.table({"content": docs, "id": list(range(300))}),
        tmp_path / "c.parquet",
        row_group_size=64,
    )
    summary = _run(
        tokenizer_path,
        resolve_inputs([str(tmp_path)]),
        tmp_path / "ds",
        read=ReadOptions(text_field="content"),
        val_fraction=0.0,
        unit_bytes=2000,
    )
    assert [s["documents"] for s in summary["sources"]] == [300, 300, 300]
    tok = Tokenizer(tokenizer_path)
    assert [tok.decode(d[:-1]) for d in _documents(tmp_path / "ds" / "train")] == docs * 3


def test_unreadable_parquet_missing_column_and_no_documents(tmp_path, tokenizer_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=f"^{bad}: unreadable parquet"):
        _run(tokenizer_path, resolve_inputs([str(bad)]), tmp_path / "ds")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"body": ["x"]}), good)
    with pytest.raises(DataError, match=rf"^{good}: no column 'text' \(columns: \['body'\]\)"):
        _run(tokenizer_path, resolve_inputs([str(good)]), tmp_path / "ds")
    empty = _jsonl(tmp_path / "e.jsonl", ['{"text": " "}'])
    with pytest.raises(
        DataError, match=f"^no documents found in 1 input file\\(s\\) \\({empty}\\)"
    ):
        _run(tokenizer_path, resolve_inputs([str(empty)]), tmp_path / "ds")
    with pytest.raises(DataError, match="nope.jsonl: no such file, directory or glob match"):
        resolve_inputs([str(tmp_path / "nope.jsonl")])


def test_an_error_mid_run_keeps_what_was_written(tmp_path, corpus, tokenizer_path):
    src = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": Path(i.path).read_text(errors="replace")}) for i in corpus[:60]]
    _jsonl(src, lines + ["not json"])
    with pytest.raises(DataError, match=f"{src}:61: not valid JSON"):
        _run(
            tokenizer_path,
            resolve_inputs([str(src)]),
            tmp_path / "ds",
            shard_tokens=5000,
            unit_bytes=20_000,
        )
    journal = json.loads((tmp_path / "ds" / JOURNAL_NAME).read_text())
    shards = journal["shards"]["train"]
    assert shards and all((tmp_path / "ds" / "train" / s["file"]).is_file() for s in shards)
    assert not (tmp_path / "ds" / "train" / "manifest.json").exists()
