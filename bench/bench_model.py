"""Our model vs a real peer: Hugging Face transformers' `LlamaForCausalLM` of the same shape.

Same parameter count (asserted), GQA heads, SwiGLU width, padded vocab, tied or untied head; same
batch, dtype, threads and AdamW. One step = forward with the loss, backward, AdamW, zero grads.
The two models run alternately (bench/paired.py): the ratio is ours / peer's tokens/s, and
peak step memory is measured once per model over one steady-state step (CUDA:
`max_memory_allocated`; CPU: every live tensor storage counted by `LiveTensorBytes`).
Goal (issue 11): tokens/s ratio >= 1.10 and memory ratio <= 0.90.

    .venv/bin/python bench/bench_model.py                                  # tiny, fp32, eager
    .venv/bin/python bench/bench_model.py --model 30m --batch 4 --seq 256 --threads 1
    .venv/bin/python bench/bench_model.py --model 124m --seq 2048 --batch 8 --dtype bf16 --compile

The peer's loss shifts its labels inside (T - 1 predictions per row, ours T with a separate
target row): both are charged B x T tokens per step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import paired  # noqa: E402

from distlm.config import ModelConfig  # noqa: E402
from distlm.config_loader import load_config  # noqa: E402
from distlm.model import build_model, count_params  # noqa: E402
from distlm.model.llama import ffn_hidden, padded_vocab  # noqa: E402
from distlm.parallel.float8 import Float8Plan, apply_float8  # noqa: E402
from distlm.parallel.transforms import (  # noqa: E402
    apply_activation_checkpointing,
    apply_compile,
)
from distlm.plan.measure import LiveTensorBytes  # noqa: E402


def build_peer(cfg: ModelConfig, device: torch.device) -> nn.Module:
    """transformers' LlamaForCausalLM with our model's exact shape (parameter count asserted)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=padded_vocab(cfg),
        hidden_size=cfg.d_model,
        intermediate_size=ffn_hidden(cfg),
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        use_cache=False,
    )
    hf_cfg._attn_implementation = "sdpa"  # the flash / memory-efficient kernels, as ours
    with torch.device(device):
        peer = LlamaForCausalLM(hf_cfg)
    n = sum(p.numel() for p in peer.parameters())
    assert n == count_params(cfg), f"peer has {n:,} params, ours {count_params(cfg):,}"
    return peer


@dataclass
class Side:
    """One model with its optimizer and a step function over fixed batches."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]


def make_batch(cfg: ModelConfig, batch_size: int, seq_len: int, device: torch.device):
    """(inputs, targets), each (batch_size, seq_len) int64, the same for every side."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, batch_size, seq_len), generator=gen)
    return tokens[0].to(device), tokens[1].to(device)


def make_side(
    name: str,
    cfg: ModelConfig,
    device: torch.device,
    bf16: bool,
    compile: bool,
    batch,
    fp8: Float8Plan | None = None,
    checkpointing: bool = False,
) -> Side:
    """`name` "distlm" (transforms in `parallelize`'s order: FP8, checkpointing, compile) or
    "peer"."""
    torch.manual_seed(0)
    if name == "distlm":
        model = build_model(cfg, device)
        if fp8 is not None:
            apply_float8(model, fp8, "ddp")
        if checkpointing:
            apply_activation_checkpointing(model)
        if compile:
            apply_compile(model)
        forward = lambda: model(batch[0], batch[1])  # noqa: E731
    else:
        model = build_peer(cfg, device)
        if compile:  # the same per-block compile as ours
            layers = model.model.layers
            for i, layer in enumerate(layers):
                layers[i] = torch.compile(layer)
        forward = lambda: model(input_ids=batch[0], labels=batch[0]).loss  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = (
        (lambda: torch.autocast(device.type, torch.bfloat16)) if bf16 else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Side(name, model, opt, step)


def tokens_per_s(side: Side, steps: int, tokens_per_step: int, device: torch.device) -> float:
    """CUDA: tokens per wall second. CPU: tokens per CPU second of this process (the work each
    model costs; wall time on a shared machine mostly measures the neighbours)."""
    if device.type == "cuda":
        clock, sync = time.perf_counter, torch.cuda.synchronize
    else:
        clock, sync = time.process_time, (lambda: None)
    sync()
    start = clock()
    for _ in range(steps):
        side.step()
    sync()
    return steps * tokens_per_step / (clock() - start)


class _LiveBytes(LiveTensorBytes):
    """Counts plain tensors only: a wrapper subclass (torchao's float8 tensors) has no storage of
    its own, and the mode does not see the plain tensors inside it, so emulated FP8 on CPU is
    under-counted (CUDA runs read the allocator and are exact)."""

    def track(self, t: torch.Tensor) -> None:
        if type(t) in (torch.Tensor, nn.Parameter):
            super().track(t)


def peak_step_bytes(side: Side, batch, device: torch.device) -> int | None:
    """Peak bytes of one steady-state step (params, grads, AdamW states, activations); None for
    a compiled model on CPU (torch.compile refuses to run under the counting dispatch mode)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        side.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)
    if any(hasattr(m, "_orig_mod") for m in side.model.modules()):
        return None
    tracker = _LiveBytes()
    opt_state = (v for s in side.optimizer.state.values() for v in s.values())
    for t in [*side.model.parameters(), *side.model.buffers(), *batch, *opt_state]:
        if isinstance(t, torch.Tensor):
            tracker.track(t)
    tracker.reset_peak()
    with tracker:
        side.step()
    return tracker.peak


@dataclass
class Comparison:
    tokens_per_s: dict[str, float]  # median over rounds
    peak_bytes: dict[str, int | None]  # None: not measurable (compiled, on CPU)
    speed_ratio: tuple[float, float, float, int]  # ours / peer: min, median, max, n
    memory_ratio: float  # ours / peer (nan when not measurable)


def compare(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    bf16: bool = False,
    compile: bool = False,
    rounds: int = 5,
    steps: int = 3,
    verbose: bool = True,
) -> Comparison:
    """Ours vs the peer, alternated `rounds` times of `steps` steps (after one warm-up round)."""
    batch = make_batch(cfg, batch_size, seq_len, device)
    sides = [make_side(n, cfg, device, bf16, compile, batch) for n in ("peer", "distlm")]
    n_tok = batch_size * seq_len
    peer, ours = sides
    res = paired(
        "transformers LlamaForCausalLM",
        lambda: tokens_per_s(peer, steps, n_tok, device),
        "distlm",
        lambda: tokens_per_s(ours, steps, n_tok, device),
        rounds=rounds,
        verbose=verbose,
    )
    mem = {s.name: peak_step_bytes(s, batch, device) for s in sides}

    return Comparison(
        {"peer": statistics.median(res.a), "distlm": statistics.median(res.b)},
        mem,
        (res.min, res.median, res.max, res.n),
        mem["distlm"] / mem["peer"] if mem["distlm"] and mem["peer"] else float("nan"),
    )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="model preset (configs/model/)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block, both sides")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed run")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config([f"model={args.model}", f"model.max_seq_len={max(args.seq, 2)}"]).model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"bench_model model={args.model} ({count_params(cfg) / 1e6:.1f}M params) batch "
        f"{args.batch} x seq {args.seq} {args.dtype}{' compile' if args.compile else ''} on "
        f"{where}, {torch.get_num_threads()} threads"
    )
    c = compare(
        cfg, args.batch, args.seq, device, args.dtype == "bf16", args.compile, args.rounds,
        args.steps,
    )  # fmt: skip
    lo, med, hi, n = c.speed_ratio
    unit = "tokens/s" if device.type == "cuda" else "tokens per CPU-second"
    print(f"  {unit}   peer {c.tokens_per_s['peer']:,.0f}  distlm {c.tokens_per_s['distlm']:,.0f}")
    print(f"  speed ratio distlm / peer: median {med:.3f} (min {lo:.3f}, max {hi:.3f}, n={n})")
    if c.peak_bytes["distlm"] and c.peak_bytes["peer"]:
        print(
            f"  peak step memory  peer {c.peak_bytes['peer'] / 1e6:,.1f} MB  distlm "
            f"{c.peak_bytes['distlm'] / 1e6:,.1f} MB  ratio {c.memory_ratio:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
