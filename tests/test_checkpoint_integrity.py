"""Checkpoint checksums: a flipped byte that keeps the file's size is refused before step 0,
naming the file and the previous checkpoint; load errors are printed whole; checkpoints written
before checksums (sizes-only files.json) still load.

Runs `python -m distlm train`'s code in this process (`cli.main`) at world size 1; the 2-process
save and verify (every rank hashes its share) run in tests/test_fault_torchrun.py's resumes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_fault_inprocess import (  # noqa: F401  (clean_process, data, trained: fixtures)
    ckpt,
    clean_process,
    data,
    overrides,
    trained,
)

from distlm.checkpoint.integrity import FILES, HASH, file_digest
from distlm.train import cli


@pytest.fixture(scope="module")
def finished_run(request) -> Path:
    """test_fault_inprocess's `trained`: a 1-process 12-step run with checkpoints at 4, 8, 12."""
    return request.getfixturevalue("trained")


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def train_cli(capsys, dataset: Path, run: Path, *extra: str) -> tuple[int, str]:
    code = cli.main(["train", *overrides(dataset, run, "train.steps=14", *extra)])
    return code, capsys.readouterr().err


def losses(run: Path) -> list[int]:
    """The steps of metrics.jsonl's train rows."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def test_files_json_records_size_and_checksum_of_every_file(finished_run):
    path = ckpt(finished_run, 12)
    listing = json.loads((path / FILES).read_text())
    assert listing["hash"] == HASH and listing["format"] == 2
    on_disk = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert sorted(listing["files"]) == [n for n in on_disk if n != FILES]
    for name, entry in listing["files"].items():
        assert entry == {"bytes": (path / name).stat().st_size, HASH: file_digest(path / name)}


def test_one_flipped_byte_is_refused_naming_file_and_previous_checkpoint(
    finished_run, tiny_dataset, tmp_path, capsys
):
    run = copy_run(finished_run, tmp_path)
    shard = sorted((ckpt(run, 12) / "state").glob("*.distcp"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one weight: same size, loads fine without checksums
    shard.write_bytes(bytes(raw))
    rows = len(losses(run))

    code, err = train_cli(capsys, tiny_dataset, run)
    assert code == cli.EXIT_USER_ERROR, err
    assert f"{shard}: checksum mismatch" in err, err
    assert f"checkpoint.resume={ckpt(run, 8)}" in err, err
    assert len(losses(run)) == rows  # refused before step 0: not one step trained

    # the offered checkpoint resumes; the damaged one is only skipped, never read
    code, err = train_cli(capsys, tiny_dataset, run, f"checkpoint.resume={ckpt(run, 8)}")
    assert code == 0, err


def test_load_error_of_a_corrupted_checkpoint_is_printed_whole(
    finished_run, tiny_dataset, tmp_path, capsys
):
    """With checksums off, many flipped bytes fail inside DCP: the message keeps every path."""
    run = copy_run(finished_run, tmp_path)
    meta = ckpt(run, 12) / "state" / ".metadata"
    raw = bytearray(meta.read_bytes())
    for i in range(0, len(raw), 7):
        raw[i] ^= 0x5A
    meta.write_bytes(bytes(raw))
    code, err = train_cli(capsys, tiny_dataset, run, "checkpoint.verify=false")
    assert code == cli.EXIT_USER_ERROR, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"[rank 0] error: {ckpt(run, 12) / 'state'}: cannot load"), err
    assert line.endswith(
        f"resume from the previous checkpoint (checkpoint.resume={ckpt(run, 8)}) or start over "
        f"(checkpoint.resume=never)"
    ), err


def to_sizes_only(path: Path) -> None:
    """files.json as versions before checksums wrote it: {file: bytes}."""
    files = json.loads((path / FILES).read_text())["files"]
    (path / FILES).write_text(json.dumps({n: e["bytes"] for n, e in files.items()}))


def test_checkpoint_with_sizes_only_files_json_still_loads_and_checks_sizes(
    finished_run, tiny_dataset, tmp_path, capsys
):
    run = copy_run(finished_run, tmp_path)
    to_sizes_only(ckpt(run, 12))
    code, err = train_cli(capsys, tiny_dataset, run)
    assert code == 0 and losses(run)[-2:] == [13, 14], err

    to_sizes_only(ckpt(run, 14))
    shard = sorted((ckpt(run, 14) / "state").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    code, err = train_cli(capsys, tiny_dataset, run, "train.steps=16")
    assert code == cli.EXIT_USER_ERROR and f"{shard}: " in err and "truncated" in err, err
