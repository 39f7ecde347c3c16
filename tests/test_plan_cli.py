"""`distlm plan`: the table, what does not fit and what would, JSON, dry run from the CLI."""

import json

from distlm.config_loader import load_config
from distlm.plan.cli import main
from distlm.plan.planner import plan


def test_plan_table_and_fit_advice(capsys):
    assert main(["plan", "model=500m", "hardware=1x4090", "train.seq_len=2048"]) == 0
    out = capsys.readouterr().out
    assert "502.1M params" in out and "tokens/day" in out and "days to budget" in out
    assert "does NOT fit" in out and "would fit with:" in out


def test_nothing_fits_says_how_many_gpus():
    # 8 GB of host RAM: too little to offload 1.9B's states, and they do not fit one 4070
    cfg = load_config(
        ["model=1.9b", "hardware=1x4070", "train.seq_len=2048", "hardware.host_memory_gb=8"]
    )
    p = plan(cfg)
    assert not any(r.fits for r in p.rows)
    assert "fits from" in p.advice[-1]


def test_auto_micro_batch_is_largest_that_fits():
    cfg = load_config(
        [
            "model=1b",
            "hardware=8xh100-nvlink",
            "train.seq_len=2048",
            "train.global_batch_tokens=1048576",
        ]
    )
    p = plan(cfg)
    fsdp = next(r for r in p.rows[1:] if r.strategy == "fsdp2" and not r.activation_checkpointing)
    assert fsdp.fits and fsdp.micro_batch_size >= 4
    assert fsdp.memory.peak <= p.budget_bytes and fsdp.tokens_per_s > 0


def test_json_and_dry_run(capsys):
    assert main(["plan", "model=tiny", "hardware=2x8xh100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["world_size"] == 16 and data["rows"][0]["configured"]
    assert main(["plan", "model=tiny", "hardware=2x8xh100", "--dry-run", "--ranks", "0,15"]) == 0
    assert "match the memory model exactly" in capsys.readouterr().out
    assert main(["plan", "model=tiny", "hardware=8x5090-pcie", "--dry-run"]) == 0
    assert "memory model only" in capsys.readouterr().out  # zero2: DeepSpeed has no fake PG
