"""`parallel.grad_comm_dtype=bf16`: half the gradient bytes on the wire, the same training.

One torchrun launch (2 processes, gloo) trains the tiny model 50 steps through the real trainer
under ddp, fsdp2 and zero2 (DeepSpeed), each with fp32 and with bf16 gradient communication. The
bytes come from the backend's own record of every collective (torch's profiler events
`gloo:all_reduce`, ... with their input shapes and dtypes: `distlm.plan.wire_bytes`), so DDP's C++
reducer, FSDP2 and DeepSpeed are counted alike and nothing is patched.

On gloo, FSDP2's and DeepSpeed's gradient reduce-scatter is carried out as an all-reduce (gloo's
record names it so), so the gradient collectives are `all_reduce` for all three here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_utils import run_distributed

from distlm.config import ConfigError
from distlm.config_loader import load_config

STEPS = 50
BYTES_STEPS = 2  # steps profiled to count the bytes (the same every step)
SCALAR_BYTES = 1024  # reductions this small are losses and norms, not gradients
STRATEGIES = ("ddp", "fsdp2", "zero2")
GRAD_COLLECTIVES = ("all_reduce", "reduce_scatter")
# bf16 vs fp32 gradient communication, per-step training loss (~6.2 -> ~4.9 over 50 steps at
# lr 1e-2). Measured: mean |diff| 0.008-0.013, max 0.04-0.08 (zero2 the largest).
MEAN_LOSS_TOL = 0.03
MAX_LOSS_TOL = 0.15


def comm_runs(root: str, data_dir: str) -> None:
    """Worker (every rank): each strategy with fp32 then bf16 gradients, 50 steps for the losses
    and 2 more under the profiler for the bytes (it slows a step ~10x); rank 0 writes JSON."""
    import torch.distributed as dist
    from test_parallel_equivalence import tiny_overrides

    from distlm.plan.wire_bytes import WireBytes
    from distlm.train.trainer import train

    for strategy in STRATEGIES:
        for comm in ("fp32", "bf16"):
            name = f"{strategy}_{comm}"
            args = tiny_overrides(data_dir, f"{root}/{name}") + [
                f"parallel.strategy={strategy}",
                f"parallel.grad_comm_dtype={comm}",
                "checkpoint.every_steps=0",
                "logging.log_every_steps=25",
            ]
            result = train(load_config([*args, f"train.steps={STEPS}"]))
            short = [f"logging.run_dir={root}/{name}_bytes", f"train.steps={BYTES_STEPS}"]
            with WireBytes() as wire:
                train(load_config([*args, *short]))
            if dist.get_rank() == 0:
                record = {
                    "losses": [result.losses[k] for k in sorted(result.losses)],
                    "calls": [[c.name, c.dtype, c.bytes] for c in wire.calls],
                }
                Path(root, f"{name}.json").write_text(json.dumps(record))
            dist.barrier()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("grad_comm")
    run_distributed(
        "test_grad_comm:comm_runs", 2, timeout_s=600, root=str(root), data_dir=str(tiny_dataset)
    )
    return root


def _record(root: Path, name: str) -> dict:
    return json.loads((root / f"{name}.json").read_text())


def _bytes(record: dict, names: tuple[str, ...]) -> int:
    return sum(b for n, _, b in record["calls"] if n in names)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bf16_gradients_halve_the_bytes_on_the_wire(runs, strategy):
    fp32, bf16 = _record(runs, f"{strategy}_fp32"), _record(runs, f"{strategy}_bf16")
    grads = [c for c in fp32["calls"] if c[0] in GRAD_COLLECTIVES and c[2] > SCALAR_BYTES]
    assert grads and {d for _, d, _ in grads} == {"float"}
    grads_bf16 = [c for c in bf16["calls"] if c[0] in GRAD_COLLECTIVES and c[2] > SCALAR_BYTES]
    assert {d for _, d, _ in grads_bf16} == {"c10::BFloat16"}  # every gradient reduction
    # exactly half: the same tensors, 2 bytes per element instead of 4
    assert 2 * sum(b for *_, b in grads_bf16) == sum(b for *_, b in grads)
    # parameter all-gathers (fsdp2, zero2) and broadcasts are not gradients: unchanged
    others = ("all_gather", "broadcast")
    assert _bytes(bf16, others) == _bytes(fp32, others)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bf16_gradients_train_like_fp32(runs, strategy):
    fp32 = _record(runs, f"{strategy}_fp32")["losses"]
    bf16 = _record(runs, f"{strategy}_bf16")["losses"]
    assert len(fp32) == len(bf16) == STEPS
    assert fp32[-1] < fp32[0] - 0.5 and bf16[-1] < bf16[0] - 0.5  # both learn
    diffs = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    assert max(diffs) < MAX_LOSS_TOL, diffs
    assert sum(diffs) / STEPS < MEAN_LOSS_TOL, diffs
    assert diffs[0] == 0.0  # step 1's loss precedes any gradient exchange


def test_grad_comm_dtype_is_checked_by_name():
    with pytest.raises(ConfigError, match=r"parallel.grad_comm_dtype='fp16' is not one of"):
        load_config(["parallel.grad_comm_dtype=fp16"])


def test_each_strategy_is_told_the_comm_dtype():
    from distlm.config import resolve
    from distlm.parallel.grad_comm import fsdp_mp_policy
    from distlm.parallel.zero import deepspeed_config

    pcie = load_config(["hardware=8x5090-pcie"])
    assert pcie.parallel.grad_comm_dtype == "bf16"  # on by default where all-reduce is scarce
    assert load_config(["hardware=8xh100-nvlink"]).parallel.grad_comm_dtype == "fp32"
    ds = deepspeed_config(pcie, resolve(pcie, 8), bf16=True)
    assert ds["communication_data_type"] == "bf16"
    policy = fsdp_mp_policy(pcie, torch.bfloat16)
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.bfloat16)
    cpu = load_config(["hardware=cpu", "parallel.grad_comm_dtype=bf16"])
    policy = fsdp_mp_policy(cpu, torch.float32)  # fp32 compute, bf16 reduce-scatter
    assert (policy.param_dtype, policy.reduce_dtype) == (None, torch.bfloat16)
    assert fsdp_mp_policy(load_config(["hardware=cpu"]), torch.float32) is None


def test_fsdp_prefetch_changes_no_numbers(tiny_dataset, tmp_path):
    """parallel.fsdp_prefetch_layers=2 gathers blocks earlier; the losses stay bit-identical."""
    from test_parallel_equivalence import tiny_overrides

    from distlm.train.trainer import train

    losses = []
    for layers in (1, 2):
        args = tiny_overrides(str(tiny_dataset), str(tmp_path / f"p{layers}")) + [
            "parallel.strategy=fsdp2",
            f"parallel.fsdp_prefetch_layers={layers}",
            "train.steps=3",
            "checkpoint.every_steps=0",
        ]
        losses.append(train(load_config(args)).losses)
    assert losses[0] == losses[1] and len(losses[0]) == 3
