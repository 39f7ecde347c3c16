"""The "did you mean" of an unknown config key names what the user meant, also for names from
other trainers, through the real loader's error."""

import pytest

from distlm.config import ConfigError
from distlm.config_loader import load_config


@pytest.mark.parametrize(
    "key, hint",
    [
        ("train.learning_rate", "train.lr"),  # alias (Hugging Face / most trainers)
        ("trian.lr", "train.lr"),  # section misspelt
        ("train.lrr", "train.lr"),  # leaf misspelt
        ("train.seqLen", "train.seq_len"),  # case and separators
        ("train.block_size", "train.seq_len"),  # nanoGPT's name
        ("train.vocab_size", "model.vocab_size"),  # right leaf, wrong section
        ("model.num_hidden_layers", "model.n_layers"),
        ("train.max_steps", "train.steps"),
        ("data.verify", "data.verify_checksums"),  # shared words
        ("train.checkpoint_every", "checkpoint.every_steps"),
        ("parallel.stratgy", "parallel.strategy"),
        ("parallel.zero_stage", "parallel.strategy"),  # DeepSpeed's name
        ("parallel.gradient_checkpointing", "parallel.activation_checkpointing"),
        ("train.batch_size", "train.global_batch_tokens or train.micro_batch_size"),
    ],
)
def test_unknown_key_hints_the_key_meant(key, hint):
    with pytest.raises(ConfigError) as e:
        load_config([f"{key}=1"])
    message = str(e.value)
    assert message.startswith(f"unknown config key '{key}' in command-line argument '{key}=1'")
    assert f"; did you mean {hint}" in message


@pytest.mark.parametrize("key", ["train.learning_rate", "trian.lr", "train.lrr", "train.seqLen"])
def test_a_confident_hint_stands_alone(key):
    with pytest.raises(ConfigError, match=r"; did you mean \S+\?$"):
        load_config([f"{key}=1"])


def test_nothing_close_gives_no_hint():
    with pytest.raises(ConfigError) as e:
        load_config(["logging.wandb=1"])
    assert str(e.value) == (
        "unknown config key 'logging.wandb' in command-line argument 'logging.wandb=1'"
    )
