"""Bits per byte and per-dataset validation: exact byte counts, and each dataset of a mixture
evaluated alone gives the loss that dataset gives as the whole val set."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VOCAB
from dist_utils import run_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distlm.config import DataConfig, ModelConfig
from distlm.config_loader import load_config
from distlm.data import load_tokenizer
from distlm.eval.bpb import token_byte_lengths
from distlm.eval.validation import build_validation, evaluate
from distlm.model import build_model
from distlm.train.trainer import train

SEQ, BATCH = 64, 8
MODEL = ModelConfig(vocab_size=TINY_VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="module")
def second_dataset(tiny_dataset, tmp_path_factory) -> Path:
    """Another corpus (stdlib files the tiny dataset does not hold) with the same tokenizer."""
    root = tmp_path_factory.mktemp("second")
    stdlib = Path(json.__file__).parent.parent
    for src in sorted(stdlib.glob("[p-r]*.py"))[:12]:
        (root / f"{src.stem}.py.txt").write_text(src.read_text(errors="ignore"))
    tok = tiny_dataset.parent / "tok" / "tokenizer.model"
    out = root.parent / (root.name + "-code")
    args = f"--tokenizer {tok} --out {out} --workers 1 --val-fraction 0.2 --no-progress"
    run_command([sys.executable, "-m", "data_tools.pretokenize", str(root), *args.split()])
    return out


def test_byte_table_counts_the_utf8_bytes_of_the_source_text(tiny_dataset):
    tokenizer = load_tokenizer(str(tiny_dataset))
    table = token_byte_lengths(tokenizer)
    stdlib = Path(json.__file__).parent.parent
    texts = [p.read_text() for p in sorted(stdlib.glob("[a-c]*.py"))[:20]]
    texts += [
        "  naïve café\t— 日本語 \u00a0x\n\n    ",
        "\x00\x7f\u20ac\U0001f600",
        " leading space",
    ]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text  # the source text, exactly
        assert int(table[ids].sum()) == len(text.encode("utf-8"))
    sp = tokenizer.sp
    assert table[tokenizer.eos_id] == 0 and table[tokenizer.bos_id] == 0
    assert all(table[i] == 1 for i in range(len(table)) if sp.is_byte(i))  # <0xNN>
    assert any(sp.id_to_piece(i).startswith("\u2581") for i in range(len(table)))  # "▁" pieces


def _validation(path: str, device="cpu"):
    layout = dict(seq_len=SEQ, global_batch_size=BATCH, micro_batch_size=4, rank=0, world_size=1)
    data = DataConfig(path=path)
    return build_validation(data, 2, device=torch.device(device), vocab_size=TINY_VOCAB, **layout)


def test_mixture_reports_each_dataset_as_if_it_were_alone(tiny_dataset, second_dataset):
    torch.manual_seed(0)
    model = build_model(MODEL)
    mixed = _validation(f"{tiny_dataset}:0.7,{second_dataset}:0.3").run(model)
    alone = [_validation(str(d)).run(model) for d in (tiny_dataset, second_dataset)]
    names = [tiny_dataset.name, second_dataset.name]
    assert set(mixed) == {"loss", "perplexity", "bpb"} | {
        f"{n}/{k}" for n in names for k in ("loss", "bpb")
    }
    for name, single in zip(names, alone, strict=True):
        assert mixed[f"{name}/loss"] == single["loss"]
        assert mixed[f"{name}/bpb"] == single["bpb"]
        assert set(single) == {"loss", "perplexity", "bpb"}  # one dataset: no per-name keys
    assert min(a["loss"] for a in alone) < mixed["loss"] < max(a["loss"] for a in alone)


def test_loss_is_the_models_own_loss_and_bpb_divides_by_source_bytes(tiny_dataset):
    torch.manual_seed(0)
    model = build_model(MODEL)
    validation = _validation(str(tiny_dataset))
    loader = validation.loaders[""]
    loss, bpb = evaluate(model, loader, validation.byte_lengths)
    with torch.no_grad():
        own = [model(x, y).item() for x, y in loader]  # equal-size micro-batches
    assert loss == pytest.approx(sum(own) / len(own), rel=1e-6)
    tokenizer = load_tokenizer(str(tiny_dataset))
    num_bytes = 0
    for _, targets in loader:  # bytes by decoding each target token (byte pieces: 1 byte)
        for i in targets.flatten().tolist():
            if tokenizer.sp.is_byte(i):
                num_bytes += 1
            elif not tokenizer.sp.is_control(i):
                num_bytes += len(tokenizer.decode([i]).encode("utf-8"))
    tokens = sum(t.numel() for _, t in loader)
    assert bpb == pytest.approx(loss * tokens / (math.log(2) * num_bytes), rel=1e-9)
    assert 1.5 < num_bytes / tokens < 4.5  # Python source at vocab 512


def test_training_on_a_mixture_logs_bpb_and_each_dataset(tiny_dataset, second_dataset, tmp_path):
    cfg = load_config(
        [
            f"data.path={tiny_dataset}:0.7,{second_dataset}:0.3",
            f"logging.run_dir={tmp_path}",
            f"model.vocab_size={TINY_VOCAB}",
            "model.d_model=64",
            "model.n_layers=2",
            f"train.seq_len={SEQ}",
            f"train.global_batch_tokens={SEQ * BATCH}",
            "train.steps=2",
            "train.warmup_steps=1",
            "train.eval_batches=2",
            "train.sample_tokens=0",
        ]
    )
    result = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = next(r for r in rows if "val_loss" in r)
    names = [tiny_dataset.name, second_dataset.name]
    expected = {f"val_{n}/{k}" for n in names for k in ("loss", "bpb")}
    assert {"val_loss", "val_perplexity", "val_bpb"} | expected <= set(val)
    assert val["val_loss"] == result.val_losses[2]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/bpb"} | {f"val/{n}/{k}" for n in names for k in ("loss", "bpb")} <= tags
