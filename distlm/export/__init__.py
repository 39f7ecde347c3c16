"""Hugging Face in and out: `export` writes a model folder from any checkpoint; `load_hf_weights`
starts training from one (`model.init_from=hf:DIR`).

    hf_config.py          ModelConfig <-> config.json (Llama, or Qwen3 for QK-norm)
    hf_weights.py         our parameter names <-> Hugging Face names (fused matrices split)
    hf_tokenizer.py       the sentencepiece model -> tokenizer.json with the same ids
    safetensors_folder.py model.safetensors, or shards with an index
    hf_export.py          checkpoint -> folder (temporary folder, then rename)
    hf_import.py          folder -> an unwrapped model, before parallelize
    cli.py                `python -m distlm export`
"""

from distlm.export.errors import ExportError

__all__ = ["ExportError"]
