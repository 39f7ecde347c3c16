"""Text generation from a (possibly wrapped) model: every rank runs the same forward passes."""

from __future__ import annotations

import torch
from torch import nn


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
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -float("inf")
        tokens.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    model.train(was_training)
    return tokens[len(prompt) :]
