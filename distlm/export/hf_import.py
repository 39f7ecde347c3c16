"""`model.init_from=hf:DIR`: start training from a Hugging Face Llama (or Qwen3) folder.

Loaded into the unwrapped model right after `build_model`, before any strategy wraps or shards
it, so every strategy starts from the same full weights. A run that resumes from a checkpoint
skips it: the checkpoint holds the trained weights (and the folder may be gone by then).
"""

from __future__ import annotations

from pathlib import Path

import torch

from distlm.config import Config, ConfigError
from distlm.export.errors import ExportError
from distlm.export.hf_config import check_compatible, read_hf_config
from distlm.export.hf_weights import from_hf, name_map
from distlm.export.safetensors_folder import load_folder
from distlm.model.llama import Transformer

PREFIX = "hf:"
# tensors some Llama folders carry that are not weights (recomputed from the config)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_VOCAB_ROWS = ("embed.weight", "head.weight")


@torch.no_grad()
def load_hf_weights(model: Transformer, folder: str | Path) -> int:
    """Copy the weights of Hugging Face folder `folder` into `model`; returns the tensor count.

    The folder's config must give our shapes (differing keys are listed). Its vocabulary may be
    smaller than our padded embedding (not than model.vocab_size): padding rows keep their init.
    """
    folder, cfg = Path(folder), model.cfg
    check_compatible(cfg, read_hf_config(folder), folder)
    tensors = load_folder(folder)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied folders store the shared matrix twice
    expected = {t for _, theirs in name_map(cfg) for t in theirs}
    missing = sorted(expected - tensors.keys())
    extra = sorted(k for k in tensors.keys() - expected if not k.endswith(_IGNORED_SUFFIXES))
    if missing or extra:
        raise ExportError(
            f"{folder}: tensors do not match its config.json: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    params = model.state_dict()
    ours = from_hf(tensors, cfg)
    for name, value in ours.items():
        target = params[name]
        rows = value.shape[0] if name in _VOCAB_ROWS else target.shape[0]
        if value.shape[1:] != target.shape[1:] or value.shape[0] != rows:
            raise ExportError(
                f"{folder}: {name} has shape {tuple(value.shape)}, expected "
                f"{tuple(target.shape)} from its config.json (a damaged folder?)"
            )
        target[:rows].copy_(value)
    return len(ours)


def init_from_hf(model: Transformer, cfg: Config, run_dir: Path, rank: int) -> str | None:
    """Apply `model.init_from` unless this run resumes; returns a line for the log, if any."""
    spec = cfg.model.init_from
    if not spec:
        return None
    if not spec.startswith(PREFIX) or len(spec) == len(PREFIX):
        raise ConfigError(
            f"model.init_from={spec!r}: expected {PREFIX}DIR, a Hugging Face Llama or Qwen3 "
            f"folder (config.json + safetensors), such as one written by `python -m distlm export`"
        )
    from distlm.checkpoint import CheckpointManager

    resume = CheckpointManager(cfg, run_dir, rank).find_resume()
    if resume is not None:
        return f"model.init_from={spec} not applied: resuming from {resume}"
    n = load_hf_weights(model, spec[len(PREFIX) :])
    return f"model.init_from={spec}: {n} tensors loaded"
