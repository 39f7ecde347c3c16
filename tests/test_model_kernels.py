"""The model's kernels (RoPE, RMSNorm, SwiGLU, in-place rotated attention) against plain PyTorch.

`reference_forward` below is the textbook Llama written op by op (the model before its kernels
were tuned): fp32 upcasts, RoPE on q and k separately, `rotate_half`, autograd through every op.
The tuned model must give the same loss and the same gradients for every parameter.
"""

import pytest
import torch
import torch.nn.functional as F

from distlm.config import ModelConfig
from distlm.model import build_model
from distlm.model.llama import RMSNorm, apply_rope, rope_tables


def wide(x: torch.Tensor) -> torch.Tensor:
    """fp32, or fp64 for fp64 inputs (the exact comparison below runs in fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def ref_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, H, T, hd), GPT-NeoX halves: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)."""
    hd, t = x.size(-1), x.size(2)
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.outer(torch.arange(t, dtype=torch.float32), freqs)  # fp32 tables, as the model's
    cos, sin = wide(ang.cos()).to(wide(x).dtype), wide(ang.sin()).to(wide(x).dtype)
    x1, x2 = wide(x).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def ref_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = wide(x)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * wide(w)).type_as(x)


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(wide(logits).flatten(0, 1), targets.flatten(0, 1))


def reference_forward(model, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same parameters, plain ops only."""
    cfg = model.cfg
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    hd = cfg.d_model // H
    x = F.embedding(tokens, model.embed.weight)
    B, T, C = x.shape
    for blk in model.layers.values():
        a = blk.attn
        h = ref_rms_norm(x, blk.attn_norm.weight, cfg.norm_eps)
        q, k, v = (h @ a.qkv.weight.T).split([C, Hkv * hd, Hkv * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, Hkv, hd).transpose(1, 2)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
        if a.q_norm is not None:
            q = ref_rms_norm(q, a.q_norm.weight, cfg.norm_eps)
            k = ref_rms_norm(k, a.k_norm.weight, cfg.norm_eps)
        q, k = ref_rope(q, cfg.rope_theta), ref_rope(k, cfg.rope_theta)
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        att = (q @ k.transpose(-1, -2)) / hd**0.5
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ a.out.weight.T
        h = ref_rms_norm(x, blk.ffn_norm.weight, cfg.norm_eps)
        gate, up = (h @ blk.ffn.gate_up.weight.T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ blk.ffn.down.weight.T
    x = ref_rms_norm(x, model.norm.weight, cfg.norm_eps)
    w = model.embed.weight if model.head is None else model.head.weight
    return loss_of(x @ w.T, targets)


CASES = {
    "mha-tied": dict(n_heads=4, n_kv_heads=4),
    "gqa-untied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=False),
    "gqa-qknorm": dict(n_heads=4, n_kv_heads=1, qk_norm=True),
}


@pytest.mark.parametrize("case", CASES)
def test_model_matches_plain_reference_loss_and_grads(case):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=200, d_model=64, n_layers=2, max_seq_len=32, ffn_hidden=96, **CASES[case]
    )
    model = build_model(cfg).double()
    with torch.no_grad():  # non-trivial gains so RMSNorm's weight gradient is exercised
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    tokens, targets = torch.randint(0, 200, (2, 2, 24))
    loss = loss_of(model(tokens), targets)  # the kernels, in fp64 (the loss is model/loss.py's)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = reference_forward(model, tokens, targets)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=name)


def test_rope_in_compute_layout_equals_rotate_half():
    x = torch.randn(2, 3, 16, 8, dtype=torch.float64)  # (B, H, T, hd)
    cos, sin = rope_tables(8, 32, 10000.0)
    ours = apply_rope(x.transpose(1, 2), cos.double(), sin.double()).transpose(1, 2)
    torch.testing.assert_close(ours, ref_rope(x, 10000.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_saves_only_its_input_and_rstd(dtype):
    norm = RMSNorm(64, 1e-5)
    x = torch.randn(4, 8, 64, dtype=dtype, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = norm(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # x itself, no fp32 copy
    assert y.dtype == dtype
    torch.testing.assert_close(y, ref_rms_norm(x, norm.weight, 1e-5))


def test_block_saves_no_more_than_the_derivation():
    """Per token and layer, fp32: the norms keep x (4C) + rstd (4) and the Linear's input (4C);
    attention keeps qkv (4(C + 2kv), RoPE'd in place), SDPA's output (4C) and logsumexp (4H);
    SwiGLU keeps gate|up (8F) and its product (4F)."""
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2)
    model = build_model(cfg)
    blk = model.layers["0"]
    b, t = 2, 16
    x = torch.randn(b, t, 64, requires_grad=True)
    skip = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers(), x]}
    saved: dict[int, int] = {}

    def pack(z):
        st = z.untyped_storage()
        if st.data_ptr() not in skip:
            saved.setdefault(st.data_ptr(), st.nbytes())
        return z

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
        blk(x + 0, model.rope_cos, model.rope_sin)  # + 0: the residual input as a new tensor
    c, kv, f, h = 64, 32, 256, 4
    per_token = 2 * (4 * c + 4 + 4 * c) + 4 * (c + 2 * kv) + 4 * c + 4 * h + 12 * f
    assert sum(saved.values()) == b * t * per_token


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernels_match_the_cpu_model():
    """On CUDA RMSNorm takes torch's fused kernel: same loss and grads as the CPU path (fp32)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)
    cpu = build_model(cfg)
    gpu = build_model(cfg, "cuda")
    gpu.load_state_dict(cpu.state_dict())
    tokens, targets = torch.randint(0, 200, (2, 2, 24))
    grads = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        loss = loss_of(model(tokens.to(dev)), targets.to(dev))
        grads.append([g.cpu() for g in torch.autograd.grad(loss, list(model.parameters()))])
    for g_cpu, g_gpu in zip(*grads, strict=True):
        torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-3, atol=1e-5)
