"""The model: a pure-PyTorch Llama-style decoder that knows nothing of parallelism."""

from distlm.model.llama import (
    Block,
    Transformer,
    build_model,
    count_params,
    non_embedding_params,
    padded_vocab,
)

__all__ = [
    "Block",
    "Transformer",
    "build_model",
    "count_params",
    "non_embedding_params",
    "padded_vocab",
]
