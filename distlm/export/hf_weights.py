"""Our parameter names <-> Hugging Face Llama / Qwen3 names, fused matrices split and joined.

    ours                            Hugging Face
    embed.weight                    model.embed_tokens.weight
    layers.{i}.attn_norm.weight     model.layers.{i}.input_layernorm.weight
    layers.{i}.attn.qkv.weight      model.layers.{i}.self_attn.{q,k,v}_proj.weight  (rows d, kv, kv)
    layers.{i}.attn.out.weight      model.layers.{i}.self_attn.o_proj.weight
    layers.{i}.attn.{q,k}_norm.w..  model.layers.{i}.self_attn.{q,k}_norm.weight    (QK-norm)
    layers.{i}.ffn_norm.weight      model.layers.{i}.post_attention_layernorm.weight
    layers.{i}.ffn.gate_up.weight   model.layers.{i}.mlp.{gate,up}_proj.weight      (rows h, h)
    layers.{i}.ffn.down.weight      model.layers.{i}.mlp.down_proj.weight
    norm.weight                     model.norm.weight
    head.weight                     lm_head.weight   (absent when tied: HF ties on load)

nn.Linear weights are (out, in) on both sides, so a fused matrix splits along rows.
"""

from __future__ import annotations

import torch

from distlm.config import ModelConfig
from distlm.model.llama import ffn_hidden

# (our suffix, Hugging Face suffixes); several HF names = our rows split in that order
_LAYER = (
    ("attn_norm.weight", ("input_layernorm.weight",)),
    ("attn.qkv.weight", tuple(f"self_attn.{x}_proj.weight" for x in "qkv")),
    ("attn.out.weight", ("self_attn.o_proj.weight",)),
    ("attn.q_norm.weight", ("self_attn.q_norm.weight",)),
    ("attn.k_norm.weight", ("self_attn.k_norm.weight",)),
    ("ffn_norm.weight", ("post_attention_layernorm.weight",)),
    ("ffn.gate_up.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    ("ffn.down.weight", ("mlp.down_proj.weight",)),
)
_QK_NORM = ("attn.q_norm.weight", "attn.k_norm.weight")
_GLOBAL = (
    ("embed.weight", ("model.embed_tokens.weight",)),
    ("norm.weight", ("model.norm.weight",)),
    ("head.weight", ("lm_head.weight",)),
)


def _row_splits(cfg: ModelConfig) -> dict[str, list[int]]:
    kv = cfg.n_kv_heads * (cfg.d_model // cfg.n_heads)
    h = ffn_hidden(cfg)
    return {"attn.qkv.weight": [cfg.d_model, kv, kv], "ffn.gate_up.weight": [h, h]}


def name_map(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(our name, its HF names) for every parameter of a model with config `cfg`."""
    pairs = []
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER:
            if ours in _QK_NORM and not cfg.qk_norm:
                continue
            pairs.append((f"layers.{i}.{ours}", tuple(f"model.layers.{i}.{t}" for t in theirs)))
    for ours, theirs in _GLOBAL:
        if ours == "head.weight" and cfg.tie_embeddings:
            continue
        pairs.append((ours, theirs))
    return pairs


def _split_of(name: str, cfg: ModelConfig) -> list[int] | None:
    return _row_splits(cfg).get(name.split(".", 2)[-1]) if name.startswith("layers.") else None


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our full state dict -> Hugging Face names, fused matrices split (contiguous copies)."""
    out = {}
    for ours, theirs in name_map(cfg):
        split = _split_of(ours, cfg)
        parts = state[ours].split(split, dim=0) if split else (state[ours],)
        out.update({t: p.contiguous() for t, p in zip(theirs, parts, strict=True)})
    return out


def from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face names -> ours, split matrices joined. Every name must be present."""
    return {
        ours: torch.cat([hf[t] for t in theirs], dim=0) if len(theirs) > 1 else hf[theirs[0]]
        for ours, theirs in name_map(cfg)
    }
