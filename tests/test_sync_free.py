"""No host-device sync per training step, counted with a dispatch mode on CPU.

Every op that makes the host wait for the device (`.item()`, `float(t)`, `bool(t)`, `if t:`)
reaches the dispatcher as one of `SYNCING`; `SyncCounter` records them. A step of `ddp` and
`fsdp2` must record none when the optimizer can skip a non-finite update on the device (torch's
fused AdamW), and the skip must still be exact; through the trainer, the per-step count is 0
with such an optimizer and 1 (the guard's own read) with any other.
"""

from __future__ import annotations

import sys

import pytest
import torch
from test_fault_inprocess import clean_process  # noqa: F401 (autouse: a fresh process group)
from test_fault_torchrun import TINY
from torch.utils._python_dispatch import TorchDispatchMode

from distlm.config import resolve
from distlm.config_loader import load_config
from distlm.model import build_model
from distlm.parallel import build_strategy, destroy_distributed, init_distributed, parallelize
from distlm.parallel.optimizer import build_optimizer
from distlm.parallel.step_guard import skips_on_device
from distlm.train.trainer import train

aten = torch.ops.aten
SYNCING = {
    aten._local_scalar_dense.default,  # .item(), float(t), int(t)
    aten.is_nonzero.default,  # bool(t), `if t:`
    aten.equal.default,  # torch.equal returns a Python bool
}
SMALL = [
    *TINY,  # d_model 64, 2 layers, vocab 512, seq 32
    "train.global_batch_tokens=256",
    "train.micro_batch_size=4",  # 2 accumulation micro-steps
    "train.warmup_steps=1",
    "train.device=cpu",
]


# reads of tensors that live on the host in a GPU run too, so they never wait for the device:
# torch's non-fused AdamW keeps its step counters on the CPU (`_get_value` reads them), and the
# preemption flag is a CPU tensor all-reduced over gloo (distlm/train/fault.py)
HOST_READS = {("torch/optim/optimizer.py", "_get_value"), ("distlm/train/fault.py", "agreed")}


def _host_read() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if any(code.co_filename.endswith(f) and code.co_name == n for f, n in HOST_READS):
            return True
        frame = frame.f_back
    return False


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING and not _host_read():
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def test_counter_sees_a_sync():
    with SyncCounter() as c:
        float(torch.ones(()) * 2)
        bool(torch.ones(()) > 0)
    assert len(c.calls) == 2


def local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_step_has_no_sync_and_skips_a_nonfinite_update_exactly(strategy):
    cfg = load_config([*SMALL, f"parallel.strategy={strategy}"])
    env = init_distributed("cpu")
    torch.manual_seed(0)
    strat = build_strategy(cfg, resolve(cfg, 1), env)
    model = parallelize(build_model(cfg.model), cfg, strat)
    groups = strat.build_optimizer().param_groups
    strat.optimizer = torch.optim.AdamW(  # the optimizer that skips on the device
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
        lr=1e-3,
        fused=True,
    )
    x, y = torch.randint(0, 512, (2, 4, 32))

    def one_step(factor: float) -> torch.Tensor:
        with SyncCounter() as counter:
            strat.backward(model(x, y) * factor)
            norm = strat.step()
        assert counter.calls == [], counter.calls
        return norm

    assert torch.isfinite(one_step(1.0))  # the first step creates the AdamW states
    params = [local(p) for p in model.parameters()]
    states = [local(v) for s in strat.optimizer.state.values() for v in s.values()]
    assert not torch.isfinite(one_step(float("nan")))
    assert all(torch.equal(a, local(b)) for a, b in zip(params, model.parameters(), strict=True))
    now = [local(v) for s in strat.optimizer.state.values() for v in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(states, now, strict=True))  # step count too
    assert torch.isfinite(one_step(1.0))
    moved = [not torch.equal(a, local(b)) for a, b in zip(params, model.parameters(), strict=True)]
    assert any(moved)


def count_syncs(data, run, strategy: str, steps: int) -> int:
    cfg = load_config(
        [
            *SMALL,
            f"parallel.strategy={strategy}",
            f"data.path={data}",
            f"logging.run_dir={run}",
            f"train.steps={steps}",
            "logging.log_every_steps=0",  # logs at the last step only
            "checkpoint.every_steps=0",  # saves at the last step only
        ]
    )
    with SyncCounter() as counter:
        train(cfg)
    destroy_distributed()
    return len(counter.calls)


def test_trainer_steps_add_no_sync(tiny_dataset, tmp_path):
    """Runs of 2 and 4 steps do the same set-up and final log / checkpoint: the extra syncs of
    the 2 more steps are the per-step ones (fsdp2: the strategy with the most device work)."""
    short = count_syncs(tiny_dataset, tmp_path / "a", "fsdp2", 2)
    long = count_syncs(tiny_dataset, tmp_path / "b", "fsdp2", 4)
    cfg = load_config(SMALL)
    fused = skips_on_device(build_optimizer(build_model(cfg.model), cfg, torch.device("cpu")))
    assert (long - short) / 2 == (0 if fused else 1), (short, long)
