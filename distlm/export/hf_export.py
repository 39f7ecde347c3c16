"""A distlm checkpoint -> a Hugging Face model folder that `from_pretrained` loads.

    OUT_DIR/config.json               LlamaForCausalLM (Qwen3ForCausalLM for a QK-norm model)
    OUT_DIR/generation_config.json    bos / eos / pad; padding ids of the embedding suppressed
    OUT_DIR/model.safetensors         or model-0000i-of-0000n.safetensors + the index
    OUT_DIR/tokenizer.json            the training tokenizer, same ids (see hf_tokenizer)
    OUT_DIR/tokenizer_config.json

Weights come from `distlm.checkpoint.consolidate.load_full_state_dict` (any strategy, one
process, no GPU). Everything is written into a temporary sibling folder renamed to OUT_DIR at
the end, so OUT_DIR is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from distlm.checkpoint.consolidate import load_full_state_dict
from distlm.config import ModelConfig
from distlm.export import hf_config, hf_tokenizer
from distlm.export.errors import ExportError
from distlm.export.hf_weights import to_hf
from distlm.export.safetensors_folder import save_folder
from distlm.model.llama import build_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}  # config.json's spelling
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the Hub's customary 5 GB shards


def checkpoint_model_config(state: dict) -> ModelConfig:
    """The ModelConfig recorded in a checkpoint's trainer_state.json."""
    saved = state.get("model_config")
    where = Path(state.get("checkpoint", "?")) / "trainer_state.json"
    if not isinstance(saved, dict):
        raise ExportError(f"{where}: no model_config; was it written by distlm's trainer?")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in saved.items() if k in known})


def check_weights(weights: dict[str, torch.Tensor], cfg: ModelConfig, where: Path) -> None:
    """The checkpoint's tensors are exactly those of a model with `cfg` (names and shapes)."""
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, "meta").state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    diff = [f"{k}: missing" for k in expected if k not in got]
    diff += [f"{k}: unexpected" for k in got if k not in expected]
    diff += [f"{k}: {got[k]} vs {s}" for k, s in expected.items() if k in got and got[k] != s]
    if diff:
        raise ExportError(
            f"{where}: its weights are not those of its model_config (a checkpoint of another "
            f"model?): {'; '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}"
        )


def dataset_tokenizer(checkpoint: Path) -> Path:
    """The tokenizer.model of the (first) dataset the checkpoint's run trained on."""
    from distlm.data.manifest import TOKENIZER_NAME
    from distlm.data.mixture import parse_mixture

    config = checkpoint / "config.yaml"
    try:
        data_path = yaml.safe_load(config.read_text())["data"]["path"]
        path = Path(parse_mixture(data_path)[0][0]) / TOKENIZER_NAME
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise ExportError(
            f"{config}: cannot find the run's dataset ({e}); pass --tokenizer DATASET/"
            f"{TOKENIZER_NAME}"
        ) from None
    if not path.is_file():
        raise ExportError(
            f"{path}: missing (the tokenizer of data.path in {config}, relative to the training "
            f"directory); pass --tokenizer DATASET/{TOKENIZER_NAME}"
        )
    return path


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        raise ExportError(
            f"{out_dir}: already exists; choose a new output directory (export never "
            f"overwrites) or remove it first"
        )


def _write_folder(
    out_dir: Path, files: dict[str, dict], tensors: dict, max_shard_bytes: int, meta: dict
) -> list[str]:
    """JSON files and weights into a temporary sibling, renamed to out_dir when complete."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed export's leftovers
    tmp.mkdir(parents=True)
    try:
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        written = save_folder(tensors, tmp, max_shard_bytes, meta)
        for name in written:  # safetensors writes 0600; give the weights the json files' mode
            (tmp / name).chmod((tmp / "config.json").stat().st_mode & 0o777)
        _check_out_dir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def export(
    source: Path,
    out_dir: Path,
    dtype: str = "fp32",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer: Path | None = None,
) -> dict:
    """Write the Hugging Face folder of checkpoint (or run dir) `source`; returns a summary."""
    source, out_dir = Path(source), Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    _check_out_dir(out_dir)
    weights, state = load_full_state_dict(source)
    checkpoint = Path(state["checkpoint"])
    cfg = checkpoint_model_config(state)
    check_weights(weights, cfg, checkpoint)
    tok_path = Path(tokenizer) if tokenizer else dataset_tokenizer(checkpoint)
    proto = hf_tokenizer.read_sentencepiece(tok_path)
    if len(proto.pieces) != cfg.vocab_size:
        raise ExportError(
            f"{tok_path}: {len(proto.pieces)} pieces, but {checkpoint} was trained with "
            f"model.vocab_size={cfg.vocab_size}; pass the tokenizer.model of its dataset"
        )
    specials = {k: i for k, (i, _) in hf_tokenizer.special_tokens(proto).items()}
    files = hf_tokenizer.tokenizer_files(tok_path, cfg.max_seq_len)
    files["config.json"] = hf_config.hf_config(cfg, specials, DTYPE_NAMES[dtype])
    files["generation_config.json"] = hf_config.generation_config(cfg, specials, cfg.vocab_size)
    tensors = {k: v.to(DTYPES[dtype]) for k, v in to_hf(weights, cfg).items()}
    meta = {"distlm_checkpoint": str(checkpoint), "distlm_step": str(state["step"])}
    written = _write_folder(out_dir, files, tensors, max_shard_bytes, meta)
    return {
        "out_dir": str(out_dir),
        "checkpoint": str(checkpoint),
        "step": state["step"],
        "architecture": files["config.json"]["architectures"][0],
        "parameters": sum(t.numel() for t in tensors.values()),
        "dtype": dtype,
        "weight_files": written,
        "tokenizer": str(tok_path),
    }
