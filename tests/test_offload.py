"""CPU offload and the chunked loss under every strategy, for real (torchrun + gloo, 2 processes).

One 2-process launch trains the tiny config of test_parallel_equivalence (fp32, 20 steps,
checkpoints at 10 and 20) with and without `parallel.offload` under FSDP2 (`CPUOffloadPolicy`)
and DeepSpeed ZeRO-2 / ZeRO-3 (ZeRO-Offload with `DeepSpeedCPUAdam`; ZeRO-3 also offloads
params), resumes the offloaded runs from step 10, and trains with the chunked loss under DDP,
FSDP2 and ZeRO-3 (tied and untied head). DeepSpeed JIT-builds its `cpu_adam` op on first use
(2-3 min on a cold ~/.cache/torch_extensions, seconds afterwards).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dist_utils import run_distributed
from test_parallel_equivalence import LOSS_TOL, RESUME_AT, STEPS

from distlm.config import ConfigError
from distlm.config_loader import load_config

pytestmark = pytest.mark.slow
CHUNK = "model.loss_chunk_tokens=24"  # 2 x 32 tokens per micro-batch: an uneven last chunk
UNTIED = "model.tie_embeddings=false"
PLAIN = "model.loss_chunk_tokens=0"  # the plain loss (the default is chunked, 1024 tokens)


def losses(root: Path, name: str) -> dict[int, float]:
    data = json.loads((root / f"{name}.json").read_text())["losses"]
    return {int(k): v for k, v in data.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("offload")
    runs = [
        ["fsdp2", "fsdp2", None, PLAIN],
        ["fsdp2_off", "fsdp2", None, PLAIN, "parallel.offload=all"],
        ["fsdp2_off_resume", "fsdp2", "fsdp2_off", PLAIN, "parallel.offload=all"],
        ["zero2", "zero2", None],
        ["zero2_off", "zero2", None, "parallel.offload=optimizer"],
        ["zero2_off_resume", "zero2", "zero2_off", "parallel.offload=optimizer"],
        ["zero3", "zero3", None, PLAIN],
        ["zero3_off", "zero3", None, PLAIN, "parallel.offload=all"],
        ["ddp_chunk", "ddp", None, CHUNK],
        ["fsdp2_chunk", "fsdp2", None, CHUNK],
        ["zero3_chunk", "zero3", None, CHUNK],
        ["fsdp2_untied", "fsdp2", None, PLAIN, UNTIED],
        ["zero3_untied_chunk", "zero3", None, UNTIED, CHUNK],
    ]
    run_distributed(
        "test_parallel_equivalence:train_runs",
        2,
        timeout_s=600,  # a cold cpu_adam build alone takes up to ~165 s
        root=str(root),
        data_dir=str(tiny_dataset),
        runs=runs,
    )
    return root


@pytest.mark.parametrize(
    "offloaded, reference",
    [("fsdp2_off", "fsdp2"), ("zero2_off", "zero2"), ("zero3_off", "zero3")],
)
def test_offload_gives_the_losses_of_the_same_strategy(runs, offloaded, reference):
    got, ref = losses(runs, offloaded), losses(runs, reference)
    assert sorted(got) == sorted(ref) and len(got) == STEPS
    assert max(abs(got[s] - ref[s]) for s in ref) <= LOSS_TOL, (got, ref)


@pytest.mark.parametrize("name", ["fsdp2_off", "zero2_off"])
def test_offloaded_checkpoint_resumes_exactly(runs, name):
    full, resumed = losses(runs, name), losses(runs, f"{name}_resume")
    assert sorted(resumed) == list(range(RESUME_AT + 1, STEPS + 1))
    assert all(resumed[s] == full[s] for s in resumed), (resumed, full)


@pytest.mark.parametrize(
    "chunked, reference",
    [
        ("ddp_chunk", "fsdp2"),
        ("fsdp2_chunk", "fsdp2"),
        ("zero3_chunk", "zero3"),
        ("zero3_untied_chunk", "fsdp2_untied"),
    ],
)
def test_chunked_loss_trains_like_the_plain_loss_under_each_strategy(runs, chunked, reference):
    got, ref = losses(runs, chunked), losses(runs, reference)
    assert max(abs(got[s] - ref[s]) for s in ref) <= LOSS_TOL, (got, ref)


def test_offload_refused_by_strategies_that_cannot():
    """Config validation (before step 0) names the strategies that can offload."""
    for strategy, offload, able in (
        ("ddp", "optimizer", "fsdp2, zero1, zero2, zero3"),
        ("zero2", "all", "fsdp2, zero3"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config([f"parallel.strategy={strategy}", f"parallel.offload={offload}"])
        assert str(err.value) == (
            f"parallel.offload={offload} is not supported by parallel.strategy={strategy}; "
            f"strategies that can: {able} (or set parallel.offload=none)"
        )
