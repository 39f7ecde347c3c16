"""Out-of-vocab token ids injected into a real shard (the Arrow file rewritten): stopped before
step 0 by the manifest's max_token_id or a scan (data.verify_checksums=true), and otherwise by the
batch guard with a message naming shard, document and sample, never a bare IndexError."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch

from distlm.config import DataConfig
from distlm.config_loader import load_config
from distlm.data import DataError, build_train_loader
from distlm.data.inspect_dataset import verify
from distlm.data.manifest import read_manifest
from distlm.data.mixture import MixtureSchedule
from distlm.data.sampler import WindowSampler
from distlm.data.shards import open_shard
from distlm.train.trainer import train

VOCAB = 512  # conftest's tiny_dataset
BAD_ID = 9999  # fits uint16, far outside the vocabulary
SEQ, BATCH = 16, 8
WHAT_TO_DO = (
    "the shard is corrupt or was not made with this dataset's tokenizer; "
    "rerun data_tools.pretokenize for it"
)


@pytest.fixture
def dataset(tiny_dataset, tmp_path) -> Path:
    shutil.copytree(tiny_dataset, tmp_path / "ds")
    return tmp_path / "ds"


def _shard(dataset: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    m = read_manifest(dataset / "train")
    assert len(m.shards) == 1  # the tiny dataset is one shard: stream position = shard position
    path = dataset / "train" / m.shards[0]["file"]
    values, offsets = open_shard(path, m.np_dtype)
    return path, values.copy(), offsets.copy()


def _corrupt(dataset: Path, position: int, manifest: str) -> tuple[Path, int, int]:
    """Rewrite the train shard with BAD_ID at token `position`; return (path, document, token
    within it). manifest: "stale" keeps the clean shard's entry (corruption after pre-tokenize:
    only the sha256 can tell), "old" records the new bytes but no max_token_id (a dataset written
    before it was recorded), "recorded" records the new bytes and max_token_id."""
    path, values, offsets = _shard(dataset)
    values[position] = BAD_ID
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    batch = pa.record_batch([column], names=["tokens"])
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    assert len(data) == path.stat().st_size
    path.write_bytes(data)
    manifest_path = dataset / "train" / "manifest.json"
    obj = json.loads(manifest_path.read_text())
    entry = obj["shards"][0]
    if manifest != "stale":
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry.pop("max_token_id")
        if manifest == "recorded":
            entry["max_token_id"] = BAD_ID
        manifest_path.write_text(json.dumps(obj))
    document = int(np.searchsorted(offsets, position, side="right")) - 1
    return path, document, position - int(offsets[document])


def _loader(dataset: Path, world: int = 1, rank: int = 0, **kw):
    return build_train_loader(
        DataConfig(path=str(dataset), **kw),
        seq_len=SEQ,
        global_batch_size=BATCH,
        micro_batch_size=BATCH // world,
        rank=rank,
        world_size=world,
        device=torch.device("cpu"),
        vocab_size=VOCAB,
    )


def _window_of(dataset: Path, sample: int, seq_len: int, seed: int = 1234) -> int:
    tokens = read_manifest(dataset / "train").total_tokens
    return int(WindowSampler((tokens - 1) // seq_len, seed).windows(np.array([sample]))[0])


def test_manifest_records_the_largest_token_id_of_each_shard(tiny_dataset):
    for split in ("train", "val"):
        m = read_manifest(tiny_dataset / split)
        for entry in m.shards:
            values, _ = open_shard(tiny_dataset / split / entry["file"], m.np_dtype)
            assert entry["max_token_id"] == int(values.max()) < VOCAB


def test_recorded_max_token_id_outside_the_vocab_stops_before_step_0(dataset):
    path, _, _ = _corrupt(dataset, 1000, manifest="recorded")
    with pytest.raises(DataError) as e:
        _loader(dataset)
    assert str(e.value) == (
        f"{dataset}/train/manifest.json: shard {path.name} has max_token_id {BAD_ID}, "
        f"outside the vocabulary of {VOCAB} ids: {WHAT_TO_DO}"
    )


def test_verify_checksums_scans_the_tokens_of_an_old_manifest(dataset):
    path, document, token = _corrupt(dataset, 12_345, manifest="old")
    _loader(dataset).close()  # no max_token_id, same size and a matching sha256: loads
    expected = (
        f"{path}: token id {BAD_ID} is outside the vocabulary of {VOCAB} ids, at token "
        f"{token} of document {document}: {WHAT_TO_DO}"
    )
    with pytest.raises(DataError) as e:
        _loader(dataset, verify_checksums=True)
    assert str(e.value) == expected
    with pytest.raises(DataError) as e:  # python -m data_tools.inspect DATASET --verify
        verify(dataset)
    assert str(e.value) == expected


def test_stale_manifest_corrupt_id_in_a_batch_names_shard_document_and_sample(dataset):
    sample = 13  # global batch 1 (8 samples each), rank 1's slice at world size 2
    window = _window_of(dataset, sample, SEQ)
    position = window * SEQ + 5  # in this window only (windows overlap at multiples of SEQ)
    path, document, token = _corrupt(dataset, position, manifest="stale")
    with pytest.raises(DataError, match=f"^{path}: sha256 does not match the manifest"):
        _loader(dataset, verify_checksums=True)
    expected = (
        f"{path}: token id {BAD_ID} is outside the vocabulary of {VOCAB} ids, at token "
        f"{token} of document {document}, read by sample {sample} (window {window}) of global "
        f"batch 1: {WHAT_TO_DO}"
    )
    for world, rank in ((1, 0), (2, 1)):
        loader = _loader(dataset, world, rank)
        loader.next_batch()  # batch 0 is clean
        with pytest.raises(DataError) as e:
            loader.next_batch()
        loader.close()
        assert str(e.value) == expected
    rank0 = _loader(dataset, 2, 0)  # rank 0 of 2 reads samples 8..11 of batch 1: all clean
    rank0.next_batch(), rank0.next_batch()
    rank0.close()


def test_training_stops_with_the_data_error_not_an_index_error(dataset, tmp_path):
    seq_len, samples_per_step = 64, 16
    sample = samples_per_step + 3  # read by step 2
    position = _window_of(dataset, sample, seq_len) * seq_len + 7
    path, document, token = _corrupt(dataset, position, manifest="stale")
    cfg = load_config(
        [
            "model.vocab_size=512",
            "model.d_model=32",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.n_kv_heads=2",
            f"train.seq_len={seq_len}",
            f"train.global_batch_tokens={seq_len * samples_per_step}",
            "train.steps=3",
            "train.warmup_steps=1",
            "train.eval_every_steps=0",
            "checkpoint.every_steps=0",
            "train.sample_tokens=0",
            f"data.path={dataset}",
            f"logging.run_dir={tmp_path / 'run'}",
        ]
    )
    with pytest.raises(DataError) as e:
        train(cfg)
    assert str(e.value).startswith(
        f"{path}: token id {BAD_ID} is outside the vocabulary of {VOCAB} ids, at token "
        f"{token} of document {document}, read by sample {sample} "
    )
    assert "of global batch 1:" in str(e.value)


def test_in_a_mixture_the_guard_names_the_dataset_that_holds_the_id(dataset, tiny_dataset):
    sample = 5  # in global batch 0
    datasets, local = MixtureSchedule([0.5, 0.5]).assign(np.array([sample]))
    assert datasets[0] == 1  # the second (corrupt) dataset serves it
    tokens = read_manifest(dataset / "train").total_tokens
    sampler = WindowSampler((tokens - 1) // SEQ, 1234, stream_id=1)
    window = int(sampler.windows(local)[0])
    path, document, token = _corrupt(dataset, window * SEQ + 3, manifest="stale")
    loader = _loader(f"{tiny_dataset}:0.5,{dataset}:0.5")
    with pytest.raises(DataError) as e:
        loader.next_batch()
    loader.close()
    assert str(e.value) == (
        f"{path}: token id {BAD_ID} is outside the vocabulary of {VOCAB} ids, at token "
        f"{token} of document {document}, read by sample {sample} (window {window}) of global "
        f"batch 0: {WHAT_TO_DO}"
    )
