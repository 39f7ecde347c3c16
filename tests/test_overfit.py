"""The training step (model + strategy + accumulation) can drive a fixed batch to ~zero loss."""

import contextlib

import torch

from distlm.config import Config, ModelConfig, TrainConfig, resolve
from distlm.model import build_model
from distlm.parallel import build_strategy, init_distributed, parallelize
from distlm.train.trainer import train_step


def test_overfits_a_fixed_batch_with_accumulation():
    cfg = Config(
        model=ModelConfig(
            vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64
        ),
        train=TrainConfig(
            seq_len=32,
            global_batch_tokens=8 * 32,
            micro_batch_size=4,
            lr=1e-2,
            weight_decay=0.0,
            warmup_steps=1,
            steps=150,
        ),
    )
    env = init_distributed("cpu")
    derived = resolve(cfg, env.world_size)
    assert derived.grad_accum_steps == 2
    torch.manual_seed(0)
    strategy = build_strategy(cfg, derived, env)
    model = parallelize(build_model(cfg.model), cfg, strategy)
    strategy.build_optimizer()
    tokens = torch.randint(0, 256, (8, 33))
    batch = [(tokens[i : i + 4, :-1], tokens[i : i + 4, 1:]) for i in (0, 4)]
    losses = []
    for _ in range(cfg.train.steps):
        losses.append(train_step(model, strategy, batch, contextlib.nullcontext).item())
        strategy.step()
    assert losses[0] > 5.0  # ~ln(256) = 5.5 at init
    assert losses[-1] < 0.05, losses[-10:]
