"""Shared fixtures (no tests here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from dist_utils import run_command

TINY_VOCAB = 512


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small real dataset (vocab 512) shared by every test of the session.

    Made the way users make one: a sentencepiece tokenizer and `data_tools.pretokenize`, here on
    ~1 MB of the standard library's Python source (text every machine has).
    """
    root = tmp_path_factory.mktemp("tiny_dataset")
    corpus = root / "corpus"
    corpus.mkdir()
    # the standard library only: the corpus (and so every golden number) must not change when
    # this repo's own source does
    stdlib = Path(__import__("json").__file__).parent.parent
    sources = sorted(stdlib.glob("[a-m]*.py"))
    size = 0
    for i, src in enumerate(sources):
        text = src.read_text(errors="ignore")
        (corpus / f"{i:04d}.py.txt").write_text(text)
        size += len(text)
        if size > 1_000_000:
            break
    tok, data, py = root / "tok" / "tokenizer.model", root / "data", sys.executable
    tokenizer_args = f"--vocab-size {TINY_VOCAB} --train-threads 1".split()
    run_command([py, "-m", "data_tools.tokenizer", str(corpus), "--out", str(tok), *tokenizer_args])
    out_args = f"--tokenizer {tok} --out {data} --workers 1 --val-fraction 0.05 --no-progress"
    run_command([py, "-m", "data_tools.pretokenize", str(corpus), *out_args.split()])
    return data


@pytest.fixture(scope="session")
def zero_runs(tmp_path_factory, tiny_dataset) -> Path:
    """Real ZeRO-1/2/3 and DCP runs resumed across world sizes and strategies (zero_runs.py),
    shared by test_zero_tools.py and test_zero_reshard.py."""
    from zero_runs import make_zero_runs

    return make_zero_runs(tmp_path_factory.mktemp("zero_runs"), tiny_dataset)


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    """In-process trainings leave their process group up (train() never destroys it, so a
    torchrun job can train several configs); tear it down so each test starts clean."""
    yield
    from distlm.parallel import destroy_distributed

    destroy_distributed()
