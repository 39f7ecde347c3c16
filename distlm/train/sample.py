"""Text generation from a (possibly wrapped) model: every rank runs the same forward passes."""

from __future__ import annotations

import torch
from torch import nn

from distlm.config import Config
from distlm.data import load_tokenizer


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    context: int,
    vocab_size: int,
    device: torch.device,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> list[int]:
    """Top-k sampling without a KV cache (the demo's models are tiny).

    Sharded models (FSDP2, ZeRO-3) need every rank in each forward, so all ranks call this with
    the same prompt and seed and get the same tokens.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = list(prompt)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        x = torch.tensor([tokens[-context:]], dtype=torch.long, device=device)  # (1, T)
        logits = model(x)[0, -1, :vocab_size].float().cpu() / temperature  # (V,), padding cut
        kth = torch.topk(logits, min(top_k, vocab_size)).values[-1]
        logits[logits < kth] = -float("inf")
        tokens.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    model.train(was_training)
    return tokens[len(prompt) :]


def sample_text(model: nn.Module, cfg: Config, device: torch.device) -> str:
    """The end-of-run sample: `train.sample_prompt` and its continuation, up to the end of the
    document (the first eos); the same text for the same weights and `train.seed`."""
    tokenizer = load_tokenizer(cfg.data.path)
    t = cfg.train
    prompt = tokenizer.encode(t.sample_prompt) if t.sample_prompt else []
    out = generate(
        model,
        [tokenizer.eos_id, *prompt],  # the model saw an eos before every document
        t.sample_tokens,
        t.seq_len,
        cfg.model.vocab_size,
        device,
        temperature=t.sample_temperature,
        top_k=t.sample_top_k,
        seed=t.seed,
    )
    if tokenizer.eos_id in out:
        out = out[: out.index(tokenizer.eos_id)]
    return tokenizer.decode(prompt + out)
