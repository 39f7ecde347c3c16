"""Config loading: presets compose, overrides win, bad keys fail with the nearest names."""

import pytest

from distlm.config import ConfigError, resolve
from distlm.config_loader import available_presets, load_config


def test_presets_compose_and_overrides_win():
    cfg = load_config(["model=124m", "train.lr=3e-4", "train.seq_len=128"])
    assert cfg.model.d_model == 768 and cfg.model.n_kv_heads == 3
    assert cfg.train.lr == 3e-4 and cfg.train.seq_len == 128


@pytest.mark.parametrize("name", available_presets("model"))
def test_every_model_preset_loads(name):
    assert load_config([f"model={name}"]).model.name == name


@pytest.mark.parametrize(
    "arg, message",
    [
        (
            "trian.lr=1",
            "unknown config key 'trian.lr' in command-line argument 'trian.lr=1'; "
            "did you mean train.lr?",
        ),
        ("train.lrr=1", "did you mean train.lr"),
        ("model=125m", "no model preset '125m'"),
        ("train.lr=fast", "train.lr"),
        ("parallel.strategy=zero4", "parallel.strategy='zero4' is not one of"),
        ("model.n_kv_heads=5", "model.n_kv_heads=5 must divide model.n_heads=4; valid: [1, 2, 4]"),
        ("train.global_batch_tokens=1000", "nearest valid: 768 or 1024"),
        ("lr", "is not key=value"),
    ],
)
def test_bad_config_is_rejected_by_name(arg, message):
    with pytest.raises(ConfigError) as e:
        load_config(["train.seq_len=256", arg] if "global" in arg else [arg])
    assert message in str(e.value)


def test_batch_derivation_is_world_size_free():
    cfg = load_config(
        ["train.seq_len=256", "train.global_batch_tokens=8192", "train.micro_batch_size=4"]
    )
    one, two = resolve(cfg, 1), resolve(cfg, 2)
    assert one.global_batch_size == two.global_batch_size == 32
    assert (one.grad_accum_steps, two.grad_accum_steps) == (8, 4)


def test_indivisible_batch_proposes_valid_values():
    cfg = load_config(["train.seq_len=256", "train.global_batch_tokens=768"])
    with pytest.raises(ConfigError, match="nearest valid train.global_batch_tokens: 512 or 1024"):
        resolve(cfg, 2)
    cfg = load_config(["train.micro_batch_size=3"])
    with pytest.raises(ConfigError, match=r"micro_batch_size=3 must divide .* valid: \[1, 2, 4"):
        resolve(cfg, 1)


def test_empty_value_means_empty_string():
    assert load_config(["data.val_split="]).data.val_split == ""
