"""A Llama-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, optional QK-norm.

Pure PyTorch. This file knows nothing of parallelism, devices or training: it reads only its
`ModelConfig`. Build on the meta device and call `init_weights()` after `to_empty()` to avoid
materialising a big model twice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distlm.config import ModelConfig


def padded_vocab(cfg: ModelConfig) -> int:
    m = cfg.vocab_pad_multiple
    return (cfg.vocab_size + m - 1) // m * m


def ffn_hidden(cfg: ModelConfig) -> int:
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    m = cfg.ffn_multiple_of
    return (int(8 * cfg.d_model / 3) + m - 1) // m * m


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); rotate the two halves of each head (GPT-NeoX layout):
    # (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[: x.size(2)], sin[: x.size(2)]
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).type_as(x)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        kv_dim = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * kv_dim, bias=False)  # fused q, k, v
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([C, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = ffn_hidden(cfg)
        self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=False)  # fused gate and up
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab = padded_vocab(cfg)
        self.embed = nn.Embedding(self.vocab, cfg.d_model)
        # a ModuleDict keyed by layer index keeps state-dict names stable when wrapped per block
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, self.vocab, bias=False)
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, std) for matrices; residual outputs scaled by 1/sqrt(2 * n_layers) (GPT-2)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        cos, sin = rope_tables(
            self.cfg.d_model // self.cfg.n_heads, self.cfg.max_seq_len, self.cfg.rope_theta
        )
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)  # RMSNorm gains
            elif name.endswith(("attn.out.weight", "ffn.down.weight")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) int64 -> logits (B, T, padded_vocab), or the mean loss given targets.

        The loss lives in forward so that every wrapper (DDP, FSDP2, DeepSpeed) sees one call.
        """
        x = self.embed(tokens)  # (B, T, C)
        for block in self.layers.values():
            x = block(x, self.rope_cos, self.rope_sin)
        x = self.norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, weight)  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> Transformer:
    """Build on `device` ('meta' for a shape-only model) and initialise weights if real."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if str(device) != "meta":
        model.to_empty(device=device)
        model.init_weights()
    return model


def count_params(cfg: ModelConfig) -> int:
    """Closed-form parameter count (tests check it against the module)."""
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    attn = d * (d + 2 * cfg.n_kv_heads * hd) + d * d + (2 * hd if cfg.qk_norm else 0)
    ffn = 3 * d * ffn_hidden(cfg)
    per_layer = attn + ffn + 2 * d
    embed = padded_vocab(cfg) * d * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * per_layer + embed + d


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters in matmuls other than the embedding lookup: the FLOP-relevant count (6N)."""
    head = padded_vocab(cfg) * cfg.d_model
    return count_params(cfg) - head * (1 if cfg.tie_embeddings else 2) + head
