"""The "did you mean" of an unknown config key: the names a user most likely meant, best first.

Spelling distance alone points `train.learning_rate` at `train.min_lr_ratio`; what a user means
there is a name from another framework. So, in order, each step used only when the ones before it
found nothing:
1. the section misspelt (`trian.lr`): fix it, then match the leaf in that section;
2. the same leaf up to case and separators (`train.seqLen`), or a known alias of it
   (`learning_rate` -> `lr`, `block_size` -> `seq_len`), in the section given: this alone;
3. otherwise, in this order: the section's leaves holding all the leaf's words (`data.verify` ->
   `data.verify_checksums`), the section's leaves close in spelling (`train.lrr`), the same leaf
   or alias in another section (`train.vocab_size` -> `model.vocab_size`), then keys sharing at
   least half their words with it (`train.checkpoint_every` -> `checkpoint.every_steps`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

MAX_HINTS = 3

# Leaf names other trainers use (nanoGPT, Hugging Face Trainer / configs, torchtitan) -> ours.
ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "max_lr": ("lr",),
    "peak_lr": ("lr",),
    "max_steps": ("steps",),
    "max_iters": ("steps",),
    "num_steps": ("steps",),
    "total_steps": ("steps",),
    "train_steps": ("steps",),
    "training_steps": ("steps",),
    "warmup": ("warmup_steps",),
    "warmup_iters": ("warmup_steps",),
    "num_warmup_steps": ("warmup_steps",),
    "block_size": ("seq_len",),
    "context_length": ("seq_len",),
    "max_seq_length": ("seq_len",),
    "seq_length": ("seq_len",),
    "sequence_length": ("seq_len",),
    "batch_size": ("global_batch_tokens", "micro_batch_size"),
    "per_device_train_batch_size": ("micro_batch_size",),
    "gradient_accumulation_steps": ("global_batch_tokens", "micro_batch_size"),
    "max_grad_norm": ("grad_clip",),
    "clip_grad_norm": ("grad_clip",),
    "gradient_clipping": ("grad_clip",),
    "wd": ("weight_decay",),
    "n_layer": ("n_layers",),
    "num_layers": ("n_layers",),
    "num_hidden_layers": ("n_layers",),
    "n_head": ("n_heads",),
    "num_heads": ("n_heads",),
    "num_attention_heads": ("n_heads",),
    "num_key_value_heads": ("n_kv_heads",),
    "n_embd": ("d_model",),
    "dim": ("d_model",),
    "hidden_size": ("d_model",),
    "intermediate_size": ("ffn_hidden",),
    "precision": ("dtype",),
    "mixed_precision": ("dtype",),
    "bf16": ("dtype",),
    "fp16": ("dtype",),
    "zero_stage": ("strategy",),
    "gradient_checkpointing": ("activation_checkpointing",),
    "eval_interval": ("eval_every_steps",),
    "log_interval": ("log_every_steps",),
    "save_steps": ("every_steps",),
}


def _squash(name: str) -> str:
    """Lower case without separators: `seqLen`, `seq-len` and `seq_len` compare equal."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", name.lower()) if w}


def _dedupe(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))[:MAX_HINTS]


def _leaf_matches(leaf: str, keys: list[str]) -> list[str]:
    """Keys whose leaf is `leaf` up to case and separators, or an alias of it."""
    wanted = {_squash(leaf)} | {_squash(a) for a in ALIASES.get(leaf.lower(), ())}
    return [k for k in keys if _squash(k.rpartition(".")[2]) in wanted]


def suggest_keys(key: str, keys: list[str]) -> list[str]:
    """Up to three schema keys the unknown `key` most likely meant (empty when none is close)."""
    sections = sorted({k.partition(".")[0] for k in keys})
    section, _, leaf = key.partition(".")
    if section not in sections and leaf:  # step 1
        near = difflib.get_close_matches(section, sections, n=1)
        if near:
            section, key = near[0], f"{near[0]}.{leaf}"
            if key in keys:
                return [key]
    leaf = leaf or section  # a bare `lr=...`
    mine = [k for k in keys if k.startswith(section + ".")]
    if hits := _leaf_matches(leaf, mine):  # step 2, this section
        return _dedupe(hits)
    words = _words(leaf)  # step 3, this section: leaves holding all its words, then spelling
    spelt = [f"{section}.{x}" for x in difflib.get_close_matches(leaf, _leaves(mine), n=3)]
    holding = [k for k in mine if words <= _words(k.partition(".")[2])]
    elsewhere = _leaf_matches(leaf, keys)  # step 2, other sections

    def overlap(k: str) -> float:  # another section's name counts as words of its keys
        theirs = _words(k.partition(".")[2] if k.startswith(section + ".") else k)
        return len(words & theirs) / len(words | theirs)

    shared = sorted((k for k in keys if overlap(k) >= 0.5), key=overlap, reverse=True)
    return _dedupe(holding + spelt + elsewhere + shared)


def _leaves(keys: list[str]) -> list[str]:
    return [k.partition(".")[2] for k in keys]
