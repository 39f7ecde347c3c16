"""Chunked (fused linear) cross-entropy: equal to the plain loss, and the logits never exist."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distlm.config import ModelConfig
from distlm.config_loader import load_config
from distlm.model.llama import build_model, padded_vocab

SMALL = ModelConfig(
    vocab_size=1000, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64
)


def loss_and_grads(cfg: ModelConfig, chunk: int, bf16: bool = False):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, loss_chunk_tokens=chunk))
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (3, 50), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (3, 50), generator=gen)
    targets[0, :5] = -100  # ignored positions, as F.cross_entropy's ignore_index
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = model(tokens, targets)
    (loss * 0.25).backward()  # a scaled loss, as gradient accumulation passes it
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, model


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_and_grads_equal_plain_fp32(tie):
    cfg = dataclasses.replace(SMALL, tie_embeddings=tie)
    plain_loss, plain_grads, _ = loss_and_grads(cfg, 0)
    for chunk in (37, 150, 4096):  # uneven last chunk, exact split, one chunk
        loss, grads, _ = loss_and_grads(cfg, chunk)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
        for name, g in plain_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_under_bf16_autocast_matches_plain():
    plain_loss, plain_grads, _ = loss_and_grads(SMALL, 0, bf16=True)
    loss, grads, model = loss_and_grads(SMALL, 37, bf16=True)
    assert abs(loss.item() - plain_loss.item()) < 1e-5  # fp32 softmax over the same bf16 logits
    for name, g in plain_grads.items():  # both matmul in bf16; ours accumulates dW in fp32
        assert grads[name].dtype == torch.float32
        assert (grads[name] - g).abs().max() <= 0.01 * g.abs().max(), name
    logits = model(torch.zeros(2, 5, dtype=torch.long))  # no targets: logits, as before
    assert logits.shape == (2, 5, padded_vocab(SMALL))


def test_chunked_loss_drops_peak_step_bytes_by_more_than_the_logits():
    """vocab 32k, seq 1024: a step's peak live tensor bytes fall by >= one fp32 logits tensor."""
    from distlm.plan.measure import measure

    base = [
        "model=tiny",
        "hardware=cpu",
        "model.vocab_size=32000",
        "model.d_model=64",
        "model.n_layers=1",
        "model.n_heads=2",
        "model.n_kv_heads=2",
        "model.max_seq_len=1024",
        "train.seq_len=1024",
        "train.global_batch_tokens=1024",
        "train.micro_batch_size=1",
    ]
    plain = measure(load_config([*base, "model.loss_chunk_tokens=0"]), steps=3)
    chunked = measure(load_config([*base, "model.loss_chunk_tokens=256"]), steps=3)
    logits = 1024 * 32000 * 4
    assert plain.peak_bytes - chunked.peak_bytes >= logits, (plain.peak_bytes, chunked.peak_bytes)
    assert chunked.peak_bytes <= chunked.predicted.peak  # the planner's figure is an upper bound
