"""FLOPs per token, predicted tokens/s and MFU at an assumed efficiency per GPU class.

FLOPs per token = 6 N (N = matmul params incl. the lm head) + 12 L d T (attention scores and
values, forward + backward): Kaplan et al. 2020 table 1 / PaLM (Chowdhery et al. 2022) appendix B.
`flops_per_token` here is the one implementation: the trainer's MFU and the planner's predictions
both use it. Activation checkpointing recomputes the forward (2N more per
token), which costs time but is not counted as model FLOPs, so MFU is comparable across settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from distlm.config import Config
from distlm.model import non_embedding_params


def flops_per_token(cfg: Config) -> float:
    """6 * N (matmul params incl. the lm head) + 12 * L * d * T attention (PaLM appendix B)."""
    m = cfg.model
    return 6 * non_embedding_params(m) + 12 * m.n_layers * m.d_model * cfg.train.seq_len


# Assumed model-FLOPs utilisation of a well-configured run (an assumption, not a measurement):
# public reports for Llama-style pretraining put bf16 MFU at ~38-43 % on H100 SXM (Llama 3 paper,
# Dubey et al. 2024, table 4: 38-43 % on 16k H100s) and nanoGPT/llm.c runs on consumer Ada cards
# report ~30-40 %. Small models and small micro-batches land lower; `--measure` tells the truth.
ASSUMED_MFU = {
    "h100": 0.40,
    "h200": 0.40,
    "rtx": 0.35,
    "cpu": 0.0,  # no sourced CPU peak: predict nothing, measure instead
}


def gpu_class(gpu_name: str) -> str:
    name = gpu_name.lower()
    for key in ("h200", "h100"):
        if key in name:
            return key
    if "rtx" in name or "geforce" in name:
        return "rtx"
    return "cpu" if name == "cpu" else "rtx"


@dataclass(frozen=True)
class SpeedPrediction:
    flops_per_token: float  # model FLOPs (6N + attention) per token
    assumed_mfu: float
    tokens_per_s: float  # all ranks together; 0 when no peak is known
    tokens_per_day: float
    seconds_per_step: float  # one optimizer step of train.global_batch_tokens

    def days_to(self, tokens: float) -> float:
        return tokens / self.tokens_per_day if self.tokens_per_day else float("inf")


def predict_speed(
    cfg: Config, world_size: int, activation_checkpointing: bool, comm_exposed_s: float = 0.0
) -> SpeedPrediction:
    """Compute-bound tokens/s at the assumed MFU, slowed by recompute and exposed comm time."""
    fpt = flops_per_token(cfg)
    mfu = ASSUMED_MFU[gpu_class(cfg.hardware.gpu_name)]
    peak = cfg.hardware.peak_bf16_tflops * 1e12
    if not peak or not mfu:
        return SpeedPrediction(fpt, mfu, 0.0, 0.0, float("inf"))
    recompute = 8 / 6 if activation_checkpointing else 1.0  # one extra forward: 2N of 6N
    compute_s = cfg.train.global_batch_tokens * fpt * recompute / (mfu * peak * world_size)
    step_s = compute_s + comm_exposed_s
    tps = cfg.train.global_batch_tokens / step_s
    return SpeedPrediction(fpt, mfu * compute_s / step_s / recompute, tps, tps * 86400, step_s)


def mfu_of(cfg: Config, tokens_per_s: float, world_size: int) -> float:
    """Measured MFU against the preset's peak; 0 when the preset knows no peak (CPU)."""
    peak = cfg.hardware.peak_bf16_tflops * 1e12 * world_size
    return tokens_per_s * flops_per_token(cfg) / peak if peak else 0.0
