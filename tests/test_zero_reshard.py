"""ZeRO checkpoints continue at another world size and under another strategy (issue 13, item 4).

The runs are real (conftest's `zero_runs`, see zero_runs.py): each resumed run must give the
losses of the run it resumes from, as continued at that run's own world size, within fp32
tolerance (the reduction order changes with the world size); the loader position is checked by
the same losses (a batch off by one changes them by ~0.1) and the loader state saved at the end.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_parallel_equivalence import LOSS_TOL, RESUME_AT, STEPS, WEIGHT_TOL, final_weights, losses
from zero_runs import checkpoint

from distlm.checkpoint import CheckpointError

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "run, source",
    [
        ("w2_zero1_from_w1", "w1_zero1"),  # ZeRO-1, 1 -> 2 processes
        ("w1_zero2_from_w2", "w2_zero2"),  # ZeRO-2, 2 -> 1
        ("w1_zero3_from_w2", "w2_zero3"),  # ZeRO-3, 2 -> 1
        ("w1_fsdp2_from_zero2", "w2_zero2"),  # ZeRO-2 (2 processes) -> FSDP2 (1)
        ("w1_ddp_from_zero3", "w2_zero3"),  # ZeRO-3 (2 processes) -> DDP (1)
        ("w2_zero3_from_ddp", "w1_ddp"),  # DDP (1 process) -> ZeRO-3 (2)
    ],
)
def test_resume_at_another_world_size_or_strategy_continues_the_run(zero_runs, run, source):
    resumed, want = losses(zero_runs, run), losses(zero_runs, source)[RESUME_AT:]
    assert len(resumed) == STEPS - RESUME_AT
    # the data position is world-size free: the same after the same steps
    loader = [
        json.loads((checkpoint(zero_runs, r, STEPS) / "trainer_state.json").read_text())["loader"]
        for r in (run, source)
    ]
    assert loader[0] == loader[1] and loader[0]["batches_consumed"] == STEPS
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(want), rtol=0, atol=LOSS_TOL)
    have, full = final_weights(zero_runs, run), final_weights(zero_runs, source)
    assert have.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(have[key], full[key], rtol=WEIGHT_TOL, atol=WEIGHT_TOL)


def test_conversions_are_made_once_next_to_the_checkpoint(zero_runs):
    log = (zero_runs / "w1_resume.log").read_text()
    zero2 = checkpoint(zero_runs, "w2_zero2")
    # the ZeRO-2 checkpoint served two runs (FSDP2, then ZeRO-2): one conversion, one reuse
    assert log.count(f"converted {zero2}/state/zero to DeepSpeed's universal checkpoint") == 1
    assert f"using the universal checkpoint {zero2}/universal converted earlier" in log
    assert f"{zero2}/state/zero was saved by 2 rank(s), this run has 1" in log
    assert (zero2 / "universal" / "latest_universal").read_text() == "zero"
    assert (zero2 / "dcp" / ".metadata").exists()
    assert not list(zero2.glob("universal.tmp*"))  # the killed conversion's debris is gone
    assert list(checkpoint(zero_runs, "w1_ddp").glob("universal-*/latest_universal"))


def _dcp_checkpoint(path, state: dict, steps: dict[str, float]) -> None:
    """A small DCP checkpoint in `get_state_dict`'s layout: params w and v, one param group."""
    import torch.distributed.checkpoint as dcp

    model = {"w": torch.ones(2, 2), "v": torch.ones(2)}
    optim = {n: {"step": torch.tensor(steps[n]), **state} for n in model}
    groups = [{"lr": 1e-3, "weight_decay": 0.0, "params": ["w", "v"]}]
    sd = {"model": model, "optim": {"state": optim, "param_groups": groups}}
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=True)


@pytest.mark.parametrize(
    "state, steps, error",
    [
        (
            {"exp_avg": torch.zeros(1), "exp_avg_sq": torch.zeros(1)},
            {"w": 3.0, "v": 4.0},
            "AdamW step counters differ between parameters ([3.0, 4.0]); DeepSpeed keeps one per "
            "param group and cannot hold them",
        ),
        (
            {"momentum_buffer": torch.zeros(1)},
            {"w": 3.0, "v": 3.0},
            "optimizer state of w holds ['momentum_buffer', 'step']; only AdamW's step, exp_avg "
            "and exp_avg_sq map to DeepSpeed's universal checkpoint",
        ),
    ],
)
def test_dcp_state_that_zero_cannot_hold_is_refused(tmp_path, state, steps, error):
    from distlm.checkpoint.convert_zero import dcp_to_universal

    state_dir = tmp_path / "step-00000010" / "state"
    _dcp_checkpoint(state_dir, {k: v.expand(2, 2) for k, v in state.items()}, steps)
    with pytest.raises(CheckpointError) as e:
        dcp_to_universal(state_dir, {"w": "w", "v": "v"}, num_groups=1)
    assert str(e.value).startswith(f"{tmp_path}/step-00000010/universal-")
    assert f"conversion failed: {state_dir}: {error}" in str(e.value)
    assert [p.name for p in state_dir.parent.iterdir()] == ["state"]  # nothing half-made left
