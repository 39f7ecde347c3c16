"""The model: exact parameter counts, shapes, causality, GQA and QK-norm, padding."""

import pytest
import torch

from distlm.config import ModelConfig
from distlm.config_loader import available_presets, load_config
from distlm.model import build_model, count_params, padded_vocab


def closed_form(m: ModelConfig) -> int:
    """Written out independently of the model code: Llama with fused qkv, SwiGLU, RMSNorm."""
    hd = m.d_model // m.n_heads
    hidden = m.ffn_hidden or -(-int(8 * m.d_model / 3) // m.ffn_multiple_of) * m.ffn_multiple_of
    vocab = -(-m.vocab_size // m.vocab_pad_multiple) * m.vocab_pad_multiple
    attn = m.d_model * (m.n_heads + 2 * m.n_kv_heads) * hd + m.n_heads * hd * m.d_model
    mlp = 3 * m.d_model * hidden
    norms = 2 * m.d_model + (2 * hd if m.qk_norm else 0)
    embeddings = vocab * m.d_model * (1 if m.tie_embeddings else 2)
    return m.n_layers * (attn + mlp + norms) + embeddings + m.d_model


@pytest.mark.parametrize("name", available_presets("model"))
def test_param_count_matches_closed_form_and_module(name):
    m = load_config([f"model={name}"]).model
    meta = build_model(m, "meta")
    assert count_params(m) == closed_form(m) == sum(p.numel() for p in meta.parameters())


def test_named_presets_land_on_their_families():
    def n(name):
        return count_params(load_config([f"model={name}"]).model)

    assert n("124m") == 124_668_672  # GPT-2 small: 124M
    assert 1.85e9 < n("1.9b") < 1.95e9  # nanochat d32
    for name, target in [
        ("30m", 30e6),
        ("60m", 60e6),
        ("120m", 120e6),
        ("250m", 250e6),
        ("500m", 500e6),
        ("1b", 1.0e9),
    ]:
        assert abs(n(name) - target) / target < 0.06, name


def test_vocab_is_padded_to_64_and_qk_norm_adds_params():
    m = ModelConfig(vocab_size=1000)
    assert padded_vocab(m) == 1024
    q = ModelConfig(vocab_size=1000, qk_norm=True)
    assert count_params(q) - count_params(m) == m.n_layers * 2 * (m.d_model // m.n_heads)


def test_forward_is_causal_and_gqa_runs():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            vocab_size=128,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            qk_norm=True,
            max_seq_len=32,
        )
    )
    x = torch.randint(0, 128, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, 128)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 128  # change the future: the past's logits must not move
    torch.testing.assert_close(model(y)[:, :10], logits[:, :10])
    assert not torch.allclose(model(y)[:, 10:], logits[:, 10:])


def test_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    m = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4)
    model = build_model(m)
    x, y = torch.randint(0, 512, (2, 4, 32))
    loss = model(x, y).item()
    assert abs(loss - torch.log(torch.tensor(512.0)).item()) < 0.3
