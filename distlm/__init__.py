"""distlm: pretrain Llama-style LLMs from a laptop CPU to a slurm cluster with one config."""

__version__ = "0.1.0"
