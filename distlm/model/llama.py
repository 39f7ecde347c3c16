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
    """cos and sin, each (T, 1, hd/2) fp32: the layout RoPE multiplies the (B, T, heads, hd/2)
    halves of q and k by, with no reshaping per call."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)  # (T, hd/2)
    return angles.cos()[:, None, :], angles.sin()[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, hd) -> rotated, in x's dtype. GPT-NeoX / Hugging Face Llama halves:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). The plain form, which inductor fuses."""
    cos, sin = cos[: x.size(1)].to(x.dtype), sin[: x.size(1)].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _rope_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """`apply_rope` written into `out` half by half: four passes, no concatenation (in eager a
    `cat` or `roll` over the last dim costs several times a multiply)."""
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)


class _RopeQKV(torch.autograd.Function):
    """Fused qkv (B, T, H + 2Hkv, hd) -> q (B, H, T, hd), k and v (B, Hkv, T, hd) with q and k
    rotated: strided views of one new tensor, which is all SDPA keeps (the qkv projection's
    output is freed). Saves nothing else; backward rotates the gradients back (angle -> -angle)
    into one gradient tensor, where autograd's slicing would build one zero-filled copy per view.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_heads: int, n_kv_heads: int):
        t, qk = qkv.size(1), n_heads + n_kv_heads
        cos, sin = cos[:t].to(qkv.dtype), sin[:t].to(qkv.dtype)
        ctx.save_for_backward(cos, sin)
        ctx.split = (n_heads, n_kv_heads)
        out = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        _rope_into(out[:, :, :qk], qkv[:, :, :qk], cos, sin)
        out[:, :, qk:] = qkv[:, :, qk:]  # v, unrotated
        q, k, v = out.split([n_heads, n_kv_heads, n_kv_heads], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        cos, sin = ctx.saved_tensors
        h, hkv = ctx.split
        grad = gq.new_empty(gq.size(0), gq.size(2), h + 2 * hkv, gq.size(3))  # (B, T, ., hd)
        _rope_into(grad[:, :, :h], gq.transpose(1, 2), cos, -sin)
        _rope_into(grad[:, :, h : h + hkv], gk.transpose(1, 2), cos, -sin)
        grad[:, :, h + hkv :] = gv.transpose(1, 2)
        return grad, None, None, None, None


def rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int, n_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv (B, T, H + 2Hkv, hd) -> RoPE'd q (B, H, T, hd), k (B, Hkv, T, hd), v (B, Hkv, T, hd)."""
    if torch.compiler.is_compiling():  # inductor fuses the plain ops into one kernel
        qk = apply_rope(qkv[:, :, : n_heads + n_kv_heads], cos, sin)
        q, k = qk.split([n_heads, n_kv_heads], dim=2)
        return (
            q.transpose(1, 2),
            k.transpose(1, 2),
            qkv[:, :, n_heads + n_kv_heads :].transpose(1, 2),
        )
    return _RopeQKV.apply(qkv, cos, sin, n_heads, n_kv_heads)


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

    Autograd would also keep silu(gate) (F per token); backward recomputes it instead and writes
    both halves of the gradient in place, with torch's fused `silu_backward` for the gate.
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
        if torch.compiler.is_compiling():
            d_gate = torch.ops.aten.silu_backward(grad * up, gate)
            return torch.cat((d_gate, grad * F.silu(gate)), dim=-1)
        out = torch.empty_like(gate_up)
        d_gate, d_up = out.chunk(2, dim=-1)
        torch.mul(grad, F.silu(gate), out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        return out


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
        if self.q_norm is not None:
            q, k, v = qkv.split([H, Hkv, Hkv], dim=2)
            qkv = torch.cat((self.q_norm(q), self.k_norm(k), v), dim=2)
        q, k, v = rope_qkv(qkv, cos, sin, H, Hkv)  # (B, H|Hkv, T, hd), strided views
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
