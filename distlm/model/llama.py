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
from distlm.model.loss import linear_cross_entropy


def padded_vocab(cfg: ModelConfig) -> int:
    m = cfg.vocab_pad_multiple
    return (cfg.vocab_size + m - 1) // m * m


def ffn_hidden(cfg: ModelConfig) -> int:
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    m = cfg.ffn_multiple_of
    return (int(8 * cfg.d_model / 3) + m - 1) // m * m


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin, each (T, 1, hd) fp32: the layout `apply_rope` multiplies by directly.

    Both halves of a head share one angle (GPT-NeoX / Hugging Face Llama layout); the sign of
    `rotate_half` is folded into sin's first half, so RoPE is two multiplies and one roll.
    """
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)  # (T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    cos = torch.cat((cos, cos), dim=-1)  # (T, hd)
    sin = torch.cat((-sin, sin), dim=-1)
    return cos[:, None, :], sin[:, None, :]  # (T, 1, hd): broadcast over (B, T, heads, hd)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, hd) -> rotated, same shape and dtype; (x1, x2) -> (x1 c - x2 s, x2 c + x1 s).

    Nothing of x is saved for backward (only the constant tables, which are buffers), and it
    runs in x's dtype: q and k of all heads go through in one call.
    """
    t = x.size(1)
    cos, sin = cos[:t].to(x.dtype), sin[:t].to(x.dtype)
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)


class _RMSNormFn(torch.autograd.Function):
    """y = x / rms(x) * w in fp32, cast to x's dtype; saves x and rstd (B, T, 1) only.

    torch's CPU `rms_norm` is a composite that autograd records op by op: it keeps x, rstd and
    the normalised x. This keeps one tensor per token fewer and is one autograd node.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 in gradient checks
        xf = x.to(acc)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight.to(acc)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.to(rstd.dtype) * rstd
        g = grad.to(rstd.dtype)
        gxhat = g * weight.to(rstd.dtype)
        gx = rstd * (gxhat - xhat * (gxhat * xhat).mean(-1, keepdim=True))
        gw = (g * xhat).flatten(0, -2).sum(0)
        return gx.to(x.dtype), gw.to(weight.dtype), None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":  # a real fused kernel (fp32 accumulation) that saves x, rstd
            return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)
        return _RMSNormFn.apply(x, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class _SwiGLUFn(torch.autograd.Function):
    """silu(gate) * up from the fused (..., 2F) projection; saves only that input.

    Autograd would also keep silu(gate) (F per token); backward recomputes it instead.
    """

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        sig = torch.sigmoid(gate)
        silu = gate * sig
        d_gate = grad * up * sig * (1 + gate * (1 - sig))
        return torch.cat((d_gate, grad * silu), dim=-1)


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
        H, Hkv = self.n_heads, self.n_kv_heads
        qkv = self.qkv(x).view(B, T, H + 2 * Hkv, self.head_dim)  # heads: H q, Hkv k, Hkv v
        qk = qkv[:, :, : H + Hkv]  # (B, T, H + Hkv, hd) view
        if self.q_norm is not None:  # the norms save their input: rotate into a new tensor
            qk = apply_rope(
                torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), 2), cos, sin
            )
        else:  # rotate in place: q, k and v stay views of the one qkv tensor SDPA saves
            qk.copy_(apply_rope(qk, cos, sin))
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, hd), strided: SDPA reads it as is
        k = qk[:, :, H:].transpose(1, 2)  # (B, Hkv, T, hd)
        v = qkv[:, :, H + Hkv :].transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=Hkv != H
        )  # (B, H, T, hd); the flash kernels lay it out (B, T, H, hd), so the reshape is a view
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = ffn_hidden(cfg)
        self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=False)  # fused gate and up
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(_SwiGLUFn.apply(self.gate_up(x)))  # (B, T, C)


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
        if targets is None:
            return F.linear(x, weight)  # (B, T, V)
        # model.loss_chunk_tokens > 0: the (B, T, V) logits never exist at once (model/loss.py)
        return linear_cross_entropy(x, weight, targets, self.cfg.loss_chunk_tokens)


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
