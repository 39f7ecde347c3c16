"""`ModelConfig` <-> a Hugging Face `config.json` (LlamaForCausalLM, or Qwen3ForCausalLM).

Our block is Llama's: pre-norm RMSNorm, RoPE in the GPT-NeoX "rotate halves" layout (Llama's
`rotate_half`), grouped-query attention (query head h reads key/value head h // (H / Hkv), as
Llama's `repeat_kv`), SwiGLU `down(silu(gate(x)) * up(x))`, no biases. A QK-norm model adds one
RMSNorm over head_dim on queries and keys before RoPE, sharing the block's epsilon: exactly
Qwen3's `q_norm` / `k_norm`, so it is exported as Qwen3 (full attention in every layer).

Vocabulary: config.json's `vocab_size` is the padded embedding (`padded_vocab`), so the exported
model computes the very logits (and log-probabilities) training did; the tokenizer has
`model.vocab_size` ids and generation_config.json suppresses the padding ids.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from distlm.config import ModelConfig
from distlm.export.errors import ExportError
from distlm.model.llama import ffn_hidden, padded_vocab

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def model_type(cfg: ModelConfig) -> str:
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg: ModelConfig, specials: dict[str, int], dtype: str) -> dict:
    """config.json of `cfg`; `specials` maps unk/bos/eos/pad to token ids; dtype as torch
    names it ('float32' | 'bfloat16')."""
    kind = model_type(cfg)
    config = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": padded_vocab(cfg),
        "hidden_size": cfg.d_model,
        "intermediate_size": ffn_hidden(cfg),
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_model // cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 reads rope_theta, >= 5 rope_parameters
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
        **{f"{k}_token_id": specials.get(k) for k in ("bos", "eos", "pad")},
    }
    if kind == "llama":
        config |= {"mlp_bias": False, "pretraining_tp": 1}
    else:
        config |= {
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": cfg.n_layers,
            "layer_types": ["full_attention"] * cfg.n_layers,
        }
    return config


def generation_config(cfg: ModelConfig, specials: dict[str, int], tokenizer_size: int) -> dict:
    """Defaults for `model.generate`: our eos, and never an id the tokenizer cannot decode."""
    padding = list(range(tokenizer_size, padded_vocab(cfg)))
    out = {f"{k}_token_id": specials.get(k) for k in ("bos", "eos", "pad")}
    return out | ({"suppress_tokens": padding} if padding else {})


def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(
            f"{path}: missing; expected a Hugging Face model folder (config.json and "
            f"model.safetensors), such as one written by `python -m distlm export`"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable ({e})") from None


def _unsupported(hf: dict) -> list[str]:
    """Features of an HF config that our block does not have (any one makes it incompatible)."""
    kind = hf.get("model_type")
    wrong = []
    if kind not in ARCHITECTURES:
        wrong.append(f"model_type {kind!r} (expected one of {sorted(ARCHITECTURES)})")
    if hf.get("hidden_act", "silu") != "silu":
        wrong.append(f"hidden_act {hf['hidden_act']!r} (expected 'silu')")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(key):
            wrong.append(f"{key}=true")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        wrong.append(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r}")
    heads, hidden = hf.get("num_attention_heads", 1), hf.get("hidden_size", 0)
    if hf.get("head_dim") not in (None, hidden // max(1, heads)):
        wrong.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    return wrong


def implied_model_fields(hf: dict) -> dict:
    """The ModelConfig values a Hugging Face config implies (keys as in ModelConfig)."""
    rope = hf.get("rope_parameters") or {}
    return {
        "d_model": hf.get("hidden_size"),
        "n_layers": hf.get("num_hidden_layers"),
        "n_heads": hf.get("num_attention_heads"),
        "n_kv_heads": hf.get("num_key_value_heads") or hf.get("num_attention_heads"),
        "ffn_hidden": hf.get("intermediate_size"),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "qk_norm": hf.get("model_type") == "qwen3",
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def check_compatible(cfg: ModelConfig, hf: dict, folder: Path) -> None:
    """Refuse an HF model whose weights do not fit `cfg`, listing every differing key."""
    where = Path(folder) / "config.json"
    wrong = _unsupported(hf)
    if wrong:
        raise ExportError(f"{where}: not a model distlm can load: {'; '.join(wrong)}")
    ours = dataclasses.asdict(cfg) | {"ffn_hidden": ffn_hidden(cfg)}
    diff = [
        f"model.{k}={v!r} (this run: {ours[k]!r})"
        for k, v in implied_model_fields(hf).items()
        if v != ours[k]
    ]
    rows = hf.get("vocab_size")
    if rows is None or not cfg.vocab_size <= rows <= padded_vocab(cfg):
        diff.append(
            f"vocab_size {rows} (this run: model.vocab_size={cfg.vocab_size}, embedding "
            f"padded to {padded_vocab(cfg)} rows; the folder's must lie in between)"
        )
    if diff:
        raise ExportError(
            f"{where}: the model there does not fit this run's model config; set " + ", ".join(diff)
        )
