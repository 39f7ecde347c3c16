"""Fault handling that needs no second process: spikes and rollback, corrupt inputs (shards,
tokenizer/vocab, checkpoints), out of memory, and the small pieces (guard, detector, signals).

Runs `python -m distlm train`'s own code in this process at world size 1 (`cli.main`), on the
session's small real dataset (`tiny_dataset` in conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from test_fault_torchrun import TINY

from distlm.config_loader import load_config
from distlm.parallel import destroy_distributed
from distlm.train import cli
from distlm.train.fault import EXIT_REQUEUE, PreemptionWatch, injected_loss_factor, oom_report
from distlm.train.numerics import NonFiniteGuard, SpikeDetector, TrainingError
from distlm.train.trainer import train


@pytest.fixture(scope="module")
def data(tiny_dataset) -> Path:
    return tiny_dataset  # conftest.py: a small real dataset, vocab 512, shared by the session


@pytest.fixture(autouse=True)
def clean_process():
    """init_distributed writes MASTER_ADDR/RANK/...: give every test the environment it found."""
    saved = dict(os.environ)
    yield
    destroy_distributed()
    os.environ.clear()
    os.environ.update(saved)


def overrides(data: Path, run: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.path={data}", f"logging.run_dir={run}", *extra]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["train", *argv])
    return code, capsys.readouterr().err


def ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished 1-process run with checkpoints at steps 4, 8 and 12."""
    run = tmp_path_factory.mktemp("trained")
    saved = dict(os.environ)
    try:
        assert cli.main(["train", *overrides(data, run)]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return run


# ---- loss spikes --------------------------------------------------------------------------------
def test_spike_rolls_back_to_last_checkpoint_and_skips_its_batches(data, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTLM_INJECT_LOSS", "7:50")  # batch 7's loss x50
    spike = ("train.spike_factor=3", "train.spike_rollback=true")
    cfg = load_config(overrides(data, tmp_path, *spike))
    result = train(cfg)
    assert result.rollbacks == [(7, 4)] and result.final_step == 12
    state = json.loads((ckpt(tmp_path, 12) / "trainer_state.json").read_text())
    # 12 updates, 15 batches: those of steps 5, 6, 7 before the rollback were skipped
    assert state["loader"]["batches_consumed"] == 15
    assert max(result.losses.values()) < 10  # the spike's update was thrown away
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]  # the retrained steps replaced their rows
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    assert max(r["loss"] for r in train_rows) < 10


def test_spike_without_rollback_only_logs(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTLM_INJECT_LOSS", "7:50")
    result = train(load_config(overrides(data, tmp_path, "train.spike_factor=3")))
    assert result.rollbacks == [] and "step 7: loss spike" in capsys.readouterr().out


# ---- corrupt inputs: each stops before step 0 naming the file -----------------------------------
def test_truncated_shard_is_named(data, tmp_path, capsys):
    bad = tmp_path / "data"
    os.system(f"cp -r {data} {bad}")
    shard = sorted((bad / "train").glob("shard-*.arrow"))[-1]
    shard.write_bytes(shard.read_bytes()[:1000])
    code, err = run_cli(capsys, *overrides(bad, tmp_path / "run"))
    assert code == cli.EXIT_USER_ERROR and str(shard) in err, err
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or "loss" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    )


def test_checksum_mismatch_is_named(data, tmp_path, capsys):
    bad = tmp_path / "data"
    os.system(f"cp -r {data} {bad}")
    shard = sorted((bad / "train").glob("shard-*.arrow"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped
    shard.write_bytes(bytes(raw))
    code, err = run_cli(capsys, *overrides(bad, tmp_path / "run", "data.verify_checksums=true"))
    assert code == cli.EXIT_USER_ERROR and str(shard) in err and "sha256" in err, err


def test_tokenizer_vocab_mismatch_is_named(data, tmp_path, capsys):
    code, err = run_cli(capsys, *overrides(data, tmp_path, "model.vocab_size=256"))
    assert code == cli.EXIT_USER_ERROR and "512" in err and "256" in err, err


def test_truncated_checkpoint_is_named(trained, tmp_path, capsys, data):
    run = tmp_path / "run"
    os.system(f"cp -r {trained} {run}")
    shard = next((ckpt(run, 12) / "state").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    code, err = run_cli(capsys, *overrides(data, run, "train.steps=16"))
    assert code == cli.EXIT_USER_ERROR and str(shard) in err and "truncated" in err, err


def test_checkpoint_of_another_model_is_named(trained, tmp_path, capsys, data):
    run = tmp_path / "run"
    os.system(f"cp -r {trained} {run}")
    code, err = run_cli(capsys, *overrides(data, run, "train.steps=16", "model.d_model=32"))
    assert code == cli.EXIT_USER_ERROR and "step-00000012" in err, err
    assert "model.d_model: checkpoint 64 vs config 32" in err


def test_stale_tmp_checkpoint_is_removed_and_never_resumed(trained, tmp_path, capsys, data):
    run = tmp_path / "run"
    os.system(f"cp -r {trained} {run}")
    (run / "checkpoints" / "step-00000016.tmp" / "state").mkdir(parents=True)
    result = train(load_config(overrides(data, run, "train.steps=14")))
    assert result.final_step == 14 and not (run / "checkpoints" / "step-00000016.tmp").exists()
    assert "resumed from" in capsys.readouterr().out


# ---- out of memory ------------------------------------------------------------------------------
def test_oom_reports_the_planners_fitting_micro_batch(monkeypatch, capsys):
    def oom(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("distlm.train.trainer.train", oom)
    code, err = run_cli(capsys, "model=1b", "hardware=1x4090", "train.micro_batch_size=16")
    assert code == cli.EXIT_USER_ERROR
    assert "out of memory" in err and "planner's fitting micro-batch" in err, err
    assert "train.micro_batch_size=" in err.split("planner")[1]


def test_oom_report_without_planner_says_what_to_do(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "distlm.plan.planner", None)
    assert "Lower train.micro_batch_size" in oom_report(load_config(["model=1b"]))


# ---- the pieces ---------------------------------------------------------------------------------
def test_nonfinite_guard_counts_runs_and_names_checkpoint():
    guard = NonFiniteGuard(max_in_row=2)
    assert not guard.skipped(1, 1.0, lambda: None)
    assert guard.skipped(2, float("nan"), lambda: None)
    assert not guard.skipped(3, 0.5, lambda: None)  # a finite step resets the run
    assert guard.skipped(4, float("inf"), lambda: None)
    with pytest.raises(TrainingError, match="2 non-finite steps in a row ending at step 5.*ck-3"):
        guard.skipped(5, float("nan"), lambda: Path("ck-3"))


def test_spike_detector_waits_for_warmup_and_keeps_spikes_out_of_average():
    det = SpikeDetector(factor=2.0, warmup_steps=3)
    assert not any(det.is_spike(x) for x in (9.0, 30.0, 8.0))  # warm-up: no verdict
    ema = det.ema
    assert det.is_spike(3 * ema) and det.ema == ema
    assert not det.is_spike(float("nan")) and not det.is_spike(ema)


def test_preemption_signal_sets_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionWatch() as watch:
        assert not watch.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert watch.agreed() and watch.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before and EXIT_REQUEUE == 3


def test_loss_injection_spec(monkeypatch):
    monkeypatch.setenv("DISTLM_INJECT_LOSS", "3:nan,7:100")
    assert injected_loss_factor(7) == 100 and injected_loss_factor(4) == 1.0
    assert injected_loss_factor(3) != injected_loss_factor(3)  # NaN


def test_safe_dcp_load_matches_dcp_and_refuses_foreign_pickles(trained, tmp_path):
    import pickle

    import torch.distributed.checkpoint as dcp

    from distlm.checkpoint.safe_load import safe_dcp_load
    from distlm.config import resolve
    from distlm.model import build_model
    from distlm.parallel import build_strategy, init_distributed, parallelize
    from distlm.parallel.dcp_state import dcp_state

    cfg = load_config(TINY)
    env = init_distributed("cpu")

    def fresh_state() -> dict:
        strategy = build_strategy(cfg, resolve(cfg, 1), env)
        parallelize(build_model(cfg.model), cfg, strategy)
        strategy.build_optimizer()
        return dcp_state(strategy.inner, strategy.optimizer)

    path = ckpt(trained, 12) / "state"
    plain, safe = fresh_state(), fresh_state()
    dcp.load(plain, checkpoint_id=str(path))
    safe_dcp_load(safe, path)
    assert all(torch.equal(plain["model"][k], safe["model"][k]) for k in plain["model"])
    assert plain["optim"]["param_groups"] == safe["optim"]["param_groups"]

    evil = tmp_path / "state"
    shutil.copytree(path, evil)
    (evil / ".metadata").write_bytes(pickle.dumps(os.system))  # would run code when unpickled
    with pytest.raises(BaseException) as info:  # DCP's CheckpointException wraps each rank's
        safe_dcp_load(fresh_state(), evil)
    assert "system: refused" in f"{info.value} {getattr(info.value, 'failures', '')}"
