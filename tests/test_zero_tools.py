"""DeepSpeed's own `zero_to_fp32` works on our ZeRO checkpoints, as the README documents it
(issue 13, item 3): the script DeepSpeed copies into `state/`, and its module, run as commands on
real 2-process ZeRO-2 and ZeRO-3 checkpoints, give exactly the weights `consolidate` gives."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from dist_utils import ROOT, run_command
from safetensors.torch import load_file
from test_parallel_equivalence import STEPS
from zero_runs import checkpoint

from distlm.checkpoint.consolidate import load_full_state_dict

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "run, command",
    [
        # the copy of DeepSpeed's script that save_checkpoint leaves in state/
        ("w2_zero2", ["{ckpt}/state/zero_to_fp32.py", "{ckpt}/state/", "{ckpt}/fp32/"]),
        ("w2_zero3", ["-m", "deepspeed.utils.zero_to_fp32", "{ckpt}/state/", "{ckpt}/fp32/"]),
    ],
)
def test_deepspeed_zero_to_fp32_command_gives_our_weights(zero_runs, run, command):
    ckpt = checkpoint(zero_runs, run, STEPS)
    assert (ckpt / "state" / "latest").read_text() == "zero"  # DeepSpeed's tag pointer
    cmd = [sys.executable, *(c.format(ckpt=ckpt) for c in command), "--safe_serialization"]
    proc = run_command(cmd)  # the README's commands
    assert "fp32 state dict with 14 params 155968 elements" in proc.output
    theirs = load_file(ckpt / "fp32" / "model.safetensors")
    ours, _ = load_full_state_dict(ckpt)
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert torch.equal(theirs[key], ours[key]), key


def test_the_deepspeed_extra_brings_what_zero_to_fp32_imports():
    pyproject = Path(ROOT, "pyproject.toml").read_text()
    extra = re.search(r"^deepspeed = \[(.*)\]$", pyproject, re.MULTILINE)
    assert extra is not None, "pyproject.toml: no `deepspeed = [...]` extra"
    names = {r.strip(' "').split(">")[0].split("=")[0] for r in extra.group(1).split(",")}
    assert {"deepspeed", "huggingface_hub"} <= names
