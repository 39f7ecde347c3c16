"""The loader: the same global batches at any world size, exact resume across world sizes,
deterministic mixtures, a fixed validation set, and every dataset problem stopped before step 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distlm.config import DataConfig
from distlm.data import (
    DataError,
    build_train_loader,
    build_val_loader,
    dataset_vocab_size,
    load_tokenizer,
)
from distlm.data.demo_corpus import stdlib_sources
from distlm.data.manifest import read_manifest
from distlm.data.mixture import BLOCK, MixtureSchedule, parse_mixture
from distlm.data.pretokenize import PretokenizeOptions, pretokenize
from distlm.data.readers import ReadOptions
from distlm.data.shards import open_shard
from distlm.data.tokenizer import TokenizerTrainOptions, train_tokenizer

CPU = torch.device("cpu")
SEQ, BATCH = 16, 8  # tokens per sample, samples per global batch


def _make(root: Path, name: str, inputs, tok: Path, **kw) -> Path:
    pretokenize(
        PretokenizeOptions(
            str(tok),
            inputs,
            str(root / name),
            val_fraction=0.3,
            shard_tokens=20_000,
            workers=1,
            progress=False,
            **kw,
        )
    )
    return root / name


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    inputs = stdlib_sources(1_200_000)
    tok = root / "tok.model"
    train_tokenizer(inputs, tok, ReadOptions(), TokenizerTrainOptions(vocab_size=512))
    other = root / "other.model"
    train_tokenizer(
        inputs, other, ReadOptions(), TokenizerTrainOptions(vocab_size=512, model_type="unigram")
    )
    half = len(inputs) // 2
    return {
        "a": _make(root, "a", inputs[:half], tok),
        "b": _make(root, "b", inputs[half:], tok),
        "other": _make(root, "other", inputs[:half], other),
        "root": root,
    }


def _loader(path, world=1, rank=0, micro=None, seed=1234, **kw):
    cfg = DataConfig(path=str(path), seed=seed, **kw)
    return build_train_loader(
        cfg,
        seq_len=SEQ,
        global_batch_size=BATCH,
        micro_batch_size=micro or BATCH // world,
        rank=rank,
        world_size=world,
        device=CPU,
        vocab_size=512,
    )


def _global_batches(path, world, micro, n, state=None):
    """Concatenate all ranks' micro-batches of n global batches: (n, BATCH, SEQ) x2."""
    per_rank = []
    for rank in range(world):
        loader = _loader(path, world, rank, micro)
        if state:
            loader.load_state_dict(state)
        per_rank.append([loader.next_batch() for _ in range(n)])
        loader.close()
    xs = [torch.cat([x for r in per_rank for x, _ in r[k]]) for k in range(n)]
    ys = [torch.cat([y for r in per_rank for _, y in r[k]]) for k in range(n)]
    return torch.stack(xs), torch.stack(ys)


def _stream(split_dir: Path) -> np.ndarray:
    m = read_manifest(split_dir)
    return np.concatenate([open_shard(split_dir / s["file"], m.np_dtype)[0] for s in m.shards])


def test_batches_are_overlapping_windows_in_a_seeded_permutation(data):
    tokens = _stream(data["a"] / "train")
    num_windows = (len(tokens) - 1) // SEQ
    epoch_batches = num_windows // BATCH + 2  # run past one epoch
    x, y = _global_batches(data["a"], 1, BATCH, epoch_batches)
    assert x.shape == (epoch_batches, BATCH, SEQ) and x.dtype == torch.int64
    windows = np.stack([tokens[w * SEQ : w * SEQ + SEQ + 1] for w in range(num_windows)])
    rng = np.random.Generator(np.random.PCG64([1234, 0, 0]))
    perm = rng.permutation(num_windows)
    flat_x, flat_y = x.reshape(-1, SEQ).numpy(), y.reshape(-1, SEQ).numpy()
    assert np.array_equal(flat_x[:num_windows], windows[perm, :-1])
    assert np.array_equal(flat_y[:num_windows], windows[perm, 1:])
    perm1 = np.random.Generator(np.random.PCG64([1234, 0, 1])).permutation(num_windows)
    assert np.array_equal(flat_x[num_windows:], windows[perm1[: len(flat_x) - num_windows], :-1])


def test_global_batches_are_the_same_at_world_size_1_2_4(data):
    one = _global_batches(data["a"], 1, 8, 6)
    for world, micro in ((2, 2), (2, 4), (4, 1), (4, 2)):
        other = _global_batches(data["a"], world, micro, 6)
        assert torch.equal(one[0], other[0]) and torch.equal(one[1], other[1]), (world, micro)


def test_resume_at_world_size_2_from_a_state_saved_at_world_size_1(data):
    loader = _loader(data["a"])
    for _ in range(3):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # JSON-able, world-size free
    expected = [loader.next_batch()[0] for _ in range(2)]
    loader.close()
    assert state["samples_consumed"] == 3 * BATCH and loader.batches_consumed == 5
    x, y = _global_batches(data["a"], 2, 2, 2, state=state)
    assert torch.equal(x, torch.stack([e[0] for e in expected]))
    assert torch.equal(y, torch.stack([e[1] for e in expected]))


def test_state_from_another_seed_or_seq_len_is_refused(data):
    loader = _loader(data["a"])
    state = loader.state_dict()
    other = _loader(data["a"], seed=7)
    with pytest.raises(DataError, match="loader state has seed=1234 but this run has 7"):
        other.load_state_dict(state)
    loader.close(), other.close()


def test_mixture_is_deterministic_world_size_free_and_weighted(data):
    spec = f"{data['a']}:0.75,{data['b']}:0.25"
    assert parse_mixture(spec) == [(str(data["a"]), 0.75), (str(data["b"]), 0.25)]
    one = _global_batches(spec, 1, 8, 4)
    two = _global_batches(spec, 2, 1, 4)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    schedule = MixtureSchedule([0.75, 0.25])
    datasets, local = schedule.assign(np.arange(2 * BLOCK))
    assert (datasets[:BLOCK] == 0).sum() == 7500 and (datasets[:100] == 0).sum() == 75
    for d in (0, 1):  # each dataset's own stream is read in order, once
        assert np.array_equal(local[datasets == d], np.arange((datasets == d).sum()))
    assert not torch.equal(one[0], _global_batches(data["a"], 1, 8, 4)[0])


def test_validation_is_fixed_and_split_over_ranks(data):
    cfg = DataConfig(path=str(data["a"]))
    kw = dict(seq_len=SEQ, global_batch_size=BATCH, num_batches=3, device=CPU, vocab_size=512)
    val = build_val_loader(cfg, micro_batch_size=4, rank=0, world_size=1, **kw)
    first, second = [x for x, _ in val], [x for x, _ in val]
    assert len(first) == len(val) == 6 and all(
        torch.equal(a, b) for a, b in zip(first, second, strict=True)
    )
    halves = [
        [x for x, _ in build_val_loader(cfg, micro_batch_size=4, rank=r, world_size=2, **kw)]
        for r in (0, 1)
    ]
    for k in range(3):
        assert torch.equal(
            torch.cat(first[2 * k : 2 * k + 2]), torch.cat([halves[0][k], halves[1][k]])
        )
    assert (
        build_val_loader(
            DataConfig(path=str(data["a"]), val_split=""),
            micro_batch_size=4,
            rank=0,
            world_size=1,
            **kw,
        )
        is None
    )


def test_tokenizer_and_vocab_helpers(data):
    tok = load_tokenizer(f"{data['a']}:1,{data['b']}:1")
    assert (
        tok.vocab_size == 512
        and tok.decode(tok.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    )
    assert dataset_vocab_size(DataConfig(path=str(data["a"]))) == 512
    with pytest.raises(DataError, match="different tokenizers"):
        load_tokenizer(f"{data['a']}:1,{data['other']}:1")


# ---- a broken dataset stops the run before step 0, naming the file --------------------------


@pytest.fixture
def copy(data, tmp_path) -> Path:
    shutil.copytree(data["a"], tmp_path / "a")
    return tmp_path / "a"


def test_vocab_mismatch_names_manifest_and_both_numbers(data):
    with pytest.raises(DataError) as e:
        build_train_loader(
            DataConfig(path=str(data["a"])),
            seq_len=SEQ,
            global_batch_size=BATCH,
            micro_batch_size=BATCH,
            rank=0,
            world_size=1,
            device=CPU,
            vocab_size=4096,
        )
    assert str(e.value) == (
        f"{data['a']}/train/manifest.json: dataset vocab_size 512 but "
        "model.vocab_size=4096; set model.vocab_size=512"
    )


def test_mixture_of_two_tokenizers_is_refused(data):
    with pytest.raises(DataError, match="different tokenizers; a mixture needs one tokenizer"):
        _loader(f"{data['a']}:0.5,{data['other']}:0.5")


def test_missing_truncated_and_altered_shards(copy):
    shard = copy / "train" / "shard-00001.arrow"
    original = shard.read_bytes()
    shard.write_bytes(original[:-10])
    with pytest.raises(DataError, match=f"^{shard}: {len(original) - 10} bytes, the manifest says"):
        _loader(copy)
    shard.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    _loader(copy).close()  # same size: only the checksum can tell
    with pytest.raises(DataError, match=f"^{shard}: sha256 does not match the manifest"):
        _loader(copy, verify_checksums=True)
    shard.unlink()
    with pytest.raises(DataError, match=f"^{shard}: shard listed in the manifest is missing"):
        _loader(copy)


def test_missing_manifest_tokenizer_or_dataset(copy, tmp_path):
    (copy / "tokenizer.model").write_bytes(b"x")
    with pytest.raises(DataError, match="tokenizer.model: sha256 differs from the one in"):
        _loader(copy)
    (copy / "train" / "manifest.json").unlink()
    with pytest.raises(
        DataError,
        match=r"train/manifest.json: missing; splits with a manifest "
        r"in .*: \['val'\]",
    ):
        _loader(copy)
    with pytest.raises(DataError, match="nowhere: no such dataset directory"):
        _loader(tmp_path / "nowhere")
    with pytest.raises(DataError, match="weight 'x' of .* is not a number"):
        _loader(f"{copy}:x")
