"""The single-process trainer end to end: falling loss, exact resume, tensorboard, run dir."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distlm.checkpoint import CheckpointError
from distlm.config_loader import load_config
from distlm.train.trainer import train

TINY = [
    "model.vocab_size=512",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "train.seq_len=64",
    "train.global_batch_tokens=1024",
    "train.micro_batch_size=8",
    "train.lr=3e-3",
    "train.warmup_steps=2",
    "train.steps=12",
    "train.eval_every_steps=6",
    "train.eval_batches=2",
    "logging.log_every_steps=1",
    "checkpoint.every_steps=6",
    "train.sample_tokens=8",
]


def run(tiny_dataset, run_dir, *extra):
    return train(
        load_config([*TINY, f"data.path={tiny_dataset}", f"logging.run_dir={run_dir}", *extra])
    )


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    return run(tiny_dataset, tmp_path_factory.mktemp("ref"))


def test_loss_falls_and_run_dir_is_complete(reference):
    losses = reference.losses
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1] - 0.5
    assert set(reference.val_losses) == {6, 12}
    d = reference.run_dir
    assert (d / "config.yaml").exists()
    assert (d / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gb"} <= set(lines[0])
    assert isinstance(reference.sample, str) and reference.sample


def test_resume_gives_bit_identical_losses(reference, tiny_dataset, tmp_path):
    ckpt = reference.run_dir / "checkpoints" / "step-00000006"
    resumed = run(tiny_dataset, tmp_path, f"checkpoint.resume={ckpt}")
    assert sorted(resumed.losses) == list(range(7, 13))
    for step in range(7, 13):
        assert resumed.losses[step] == reference.losses[step], step  # exact, not approximate
    assert resumed.val_losses[12] == reference.val_losses[12]


def test_tensorboard_events_are_readable_by_tensorboard(reference):
    acc = EventAccumulator(str(reference.run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "val/perplexity"} <= set(tags)
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 13))
    assert events[-1].value == pytest.approx(reference.losses[12], rel=1e-6)


def test_resume_with_another_model_is_refused(reference, tiny_dataset, tmp_path):
    ckpt = reference.run_dir / "checkpoints" / "step-00000006"
    with pytest.raises(CheckpointError, match=r"model.d_model: checkpoint 64 vs config 128"):
        run(tiny_dataset, tmp_path, f"checkpoint.resume={ckpt}", "model.d_model=128")
