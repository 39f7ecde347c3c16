"""The central tests: one config trains to the same numbers under every strategy and world size.

Three launches, all through the real trainer (`distlm.train.train`) on a tiny real dataset:
  1. plain `python`, 1 process: ddp and fsdp2, 20 steps each (the reference), checkpoints 10, 20;
  2. torchrun, 2 processes (gloo): ddp, fsdp2, zero1, zero2, zero3 back to back; resumes from
     step 10 of each (same world size), of the 1-process DCP runs (1 -> 2) and of ddp under fsdp2;
     bf16 and NaN-step runs; each strategy's final checkpoint loaded and exported in-process;
  3. plain `python`, 1 process: resumes from the 2-process DCP checkpoints (2 -> 1).
Global batch 8 x 32 tokens, micro-batch 2: 4 accumulation steps at 1 process, 2 at 2 processes.
Final weights are compared through `consolidate`, so its DCP and ZeRO paths are tested too.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_utils import run_command, run_distributed

from distlm.checkpoint.consolidate import load_full_state_dict

STEPS, RESUME_AT = 20, 10
STRATEGIES = ("ddp", "fsdp2", "zero1", "zero2", "zero3")
LOSS_TOL = 2e-5  # fp32 losses ~5; measured differences between strategies <= 6e-6
WEIGHT_TOL = 1e-4  # after 20 AdamW steps at lr 1e-2; measured <= 4e-5
BF16_TOL = 0.05  # bf16 compute vs the fp32 run: measured <= 0.02 per step
BF16_STRATEGIES = ("fsdp2", "zero2")
NAN_STRATEGIES = ("fsdp2", "zero2", "zero3")
AC_STRATEGIES = ("fsdp2", "zero3")  # activation checkpointing wraps the blocks first
NAN = ("train.steps=8", "DISTLM_INJECT_LOSS=3:nan")  # step 3's loss (and grads) become NaN
pytestmark = pytest.mark.slow


def tiny_overrides(data_dir: str, run_dir: str) -> list[str]:
    """The shared config: a 2-layer, d_model 64 model on 8 x 32-token global batches."""
    return [
        "model=tiny",
        "model.vocab_size=512",
        "model.d_model=64",
        "model.n_layers=2",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.max_seq_len=64",
        "train.seq_len=32",
        "train.global_batch_tokens=256",
        "train.micro_batch_size=2",
        f"train.steps={STEPS}",
        "train.warmup_steps=2",
        "train.lr=1e-2",
        "train.grad_clip=1.0",
        "train.dtype=fp32",
        "train.device=cpu",
        "train.eval_every_steps=0",
        "train.eval_batches=1",
        "train.sample_tokens=0",
        f"data.path={data_dir}",
        "logging.log_every_steps=5",
        "logging.tensorboard=false",
        f"logging.run_dir={run_dir}",
        f"checkpoint.every_steps={RESUME_AT}",
        "checkpoint.keep_last=5",
        "checkpoint.resume=never",
    ]


def train_runs(root: str, data_dir: str, runs: list[list], exports: tuple = ()) -> None:
    """Worker (every rank): train each [name, strategy, resume_from | None, *overrides].

    An override `DISTLM_X=v` is set as an environment variable for that run only (the trainer's
    test fault injection, e.g. DISTLM_INJECT_LOSS).

    The process group stays up between runs (train() does not destroy it), so DeepSpeed's
    one-time set-up is paid once. Rank 0 writes `<root>/<name>.json` with the per-step losses.
    """
    import torch.distributed as dist

    from distlm.config_loader import load_config
    from distlm.train.trainer import train

    for name, strategy, resume, *extra in runs:
        args = tiny_overrides(data_dir, f"{root}/{name}") + [f"parallel.strategy={strategy}"]
        env = dict(e.split("=", 1) for e in extra if e.startswith("DISTLM_"))
        args += [e for e in extra if not e.startswith("DISTLM_")]
        if resume:
            args.append(f"checkpoint.resume={root}/{resume}/checkpoints/step-{RESUME_AT:08d}")
        start = time.perf_counter()
        os.environ.update(env)
        try:
            result = train(load_config(args))
        finally:
            for key in env:
                del os.environ[key]
        if dist.get_rank() == 0:
            record = {
                "losses": {str(k): v for k, v in result.losses.items()},
                "world_size": dist.get_world_size(),
                "strategy": strategy,
                "seconds": time.perf_counter() - start,
            }
            Path(root, f"{name}.json").write_text(json.dumps(record))
        dist.barrier()
    for name in exports:
        export_full_weights(root, data_dir, name)


def export_full_weights(root: str, data_dir: str, name: str) -> None:
    """Load run `name`'s final checkpoint into a fresh strategy; save its `full_state_dict()`."""
    import torch.distributed as dist

    from distlm.checkpoint.manager import STATE_DIR
    from distlm.config import resolve
    from distlm.config_loader import load_config
    from distlm.model import build_model
    from distlm.parallel import build_strategy, init_distributed, parallelize

    strategy_name = json.loads(Path(root, f"{name}.json").read_text())["strategy"]
    args = tiny_overrides(data_dir, f"{root}/{name}") + [f"parallel.strategy={strategy_name}"]
    cfg = load_config(args)
    env = init_distributed(cfg.train.device)
    strategy = build_strategy(cfg, resolve(cfg, env.world_size), env)
    parallelize(build_model(cfg.model, env.device), cfg, strategy)
    strategy.build_optimizer()
    strategy.load(Path(root, name, "checkpoints", f"step-{STEPS:08d}", STATE_DIR))
    full = strategy.full_state_dict()
    if dist.get_rank() == 0:
        torch.save(full, Path(root, f"{name}.full.pt"))
    dist.barrier()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    data = str(tiny_dataset)
    run_distributed(
        "test_parallel_equivalence:train_runs",
        1,
        root=str(root),
        data_dir=data,
        runs=[
            ["w1_ddp", "ddp", None],
            ["w1_fsdp2", "fsdp2", None],
            ["w1_ddp_nan", "ddp", None, *NAN],
        ],
    )
    two = [[f"w2_{s}", s, None] for s in STRATEGIES]
    two += [[f"w2_{s}_resume", s, f"w2_{s}"] for s in STRATEGIES]
    two += [["w2_fsdp2_from_w1", "fsdp2", "w1_fsdp2"], ["w2_ddp_from_w1", "ddp", "w1_ddp"]]
    two += [["w2_fsdp2_from_ddp", "fsdp2", "w2_ddp"]]  # DCP checkpoints cross strategies
    two += [[f"w2_{s}_bf16", s, None, "train.dtype=bf16"] for s in BF16_STRATEGIES]
    two += [[f"w2_{s}_nan", s, None, *NAN] for s in NAN_STRATEGIES]
    two += [
        [f"w2_{s}_ac", s, None, "parallel.activation_checkpointing=true"] for s in AC_STRATEGIES
    ]
    run_distributed(
        "test_parallel_equivalence:train_runs",
        2,
        timeout_s=420,
        root=str(root),
        data_dir=data,
        runs=two,
        exports=[f"w2_{s}" for s in STRATEGIES],
    )
    run_distributed(
        "test_parallel_equivalence:train_runs",
        1,
        root=str(root),
        data_dir=data,
        runs=[["w1_fsdp2_from_w2", "fsdp2", "w2_fsdp2"], ["w1_ddp_from_w2", "ddp", "w2_ddp"]],
    )
    return root


def losses(root: Path, name: str) -> list[float]:
    record = json.loads((root / f"{name}.json").read_text())
    return [v for _, v in sorted((int(k), v) for k, v in record["losses"].items())]


def grad_norms(root: Path, name: str) -> list[float]:
    """Pre-clip global grad norms of the logged steps (metrics.jsonl, rank 0)."""
    records = [
        json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()
    ]
    return [r["grad_norm"] for r in records if "grad_norm" in r]


def final_weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    return load_full_state_dict(root / name / "checkpoints" / f"step-{STEPS:08d}")[0]


def test_reference_run_learns(matrix):
    ref = losses(matrix, "w1_ddp")
    assert len(ref) == STEPS
    assert ref[-1] < ref[0] - 0.5, ref  # the comparison below is not between two flat lines


@pytest.mark.parametrize(
    "run", ["w1_fsdp2"] + [f"w2_{s}" for s in STRATEGIES] + [f"w2_{s}_ac" for s in AC_STRATEGIES]
)
def test_same_losses_and_weights_as_one_process(matrix, run):
    ref = losses(matrix, "w1_ddp")
    got = losses(matrix, run)
    assert len(got) == STEPS
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=0, atol=LOSS_TOL)
    # the norm, unlike AdamW's update, scales with the loss: this catches a strategy that
    # divides by the accumulation steps a second time (or not at all)
    want_norms = grad_norms(matrix, "w1_ddp")
    assert len(want_norms) == STEPS // 5
    torch.testing.assert_close(
        torch.tensor(grad_norms(matrix, run)), torch.tensor(want_norms), rtol=1e-4, atol=1e-5
    )
    want, have = final_weights(matrix, "w1_ddp"), final_weights(matrix, run)
    assert have.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(
            have[key],
            want[key],
            rtol=WEIGHT_TOL,
            atol=WEIGHT_TOL,
            msg=lambda m, k=key: f"{run} {k}: {m}",
        )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_is_exact_at_same_world_size(matrix, strategy):
    full = losses(matrix, f"w2_{strategy}")
    resumed = losses(matrix, f"w2_{strategy}_resume")
    assert resumed == full[RESUME_AT:]  # bit-identical on CPU


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_state_dict_equals_the_consolidated_checkpoint(matrix, strategy):
    """In-process export (`Strategy.full_state_dict`, fp32 masters) == offline `consolidate`."""
    live = torch.load(matrix / f"w2_{strategy}.full.pt", weights_only=True)
    offline = final_weights(matrix, f"w2_{strategy}")
    assert live.keys() == offline.keys()
    for key in live:
        assert live[key].dtype == torch.float32
        assert torch.equal(live[key], offline[key]), key


@pytest.mark.parametrize("strategy", NAN_STRATEGIES)
def test_non_finite_step_is_skipped_like_one_process(matrix, strategy):
    """Step 3's NaN gradients are not applied: later losses are finite and equal the reference."""
    got, ref = losses(matrix, f"w2_{strategy}_nan"), losses(matrix, "w1_ddp_nan")
    assert len(got) == 8 and math.isnan(got[2]) and math.isnan(ref[2])
    del got[2], ref[2]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=0, atol=LOSS_TOL)


@pytest.mark.parametrize("strategy", BF16_STRATEGIES)
def test_bf16_mixed_precision_tracks_fp32(matrix, strategy):
    got, ref = losses(matrix, f"w2_{strategy}_bf16"), losses(matrix, "w1_ddp")
    assert len(got) == STEPS and got != ref  # bf16 really was used
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=0, atol=BF16_TOL)


def test_dcp_checkpoint_of_ddp_resumes_under_fsdp2(matrix):
    resumed = losses(matrix, "w2_fsdp2_from_ddp")
    want = losses(matrix, "w2_ddp")[RESUME_AT:]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(want), rtol=0, atol=LOSS_TOL)


@pytest.mark.parametrize(
    "run, source",
    [
        ("w2_fsdp2_from_w1", "w1_fsdp2"),
        ("w2_ddp_from_w1", "w1_ddp"),
        ("w1_fsdp2_from_w2", "w2_fsdp2"),
        ("w1_ddp_from_w2", "w2_ddp"),
    ],
)
def test_dcp_resume_at_other_world_size(matrix, run, source):
    resumed = losses(matrix, run)
    assert len(resumed) == STEPS - RESUME_AT
    torch.testing.assert_close(
        torch.tensor(resumed),
        torch.tensor(losses(matrix, source)[RESUME_AT:]),
        rtol=0,
        atol=LOSS_TOL,
    )
    want, have = final_weights(matrix, source), final_weights(matrix, run)
    for key in want:
        torch.testing.assert_close(have[key], want[key], rtol=WEIGHT_TOL, atol=WEIGHT_TOL)


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_consolidate_cli_writes_one_safetensors_file(matrix, strategy, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "model.safetensors"
    run_dir = matrix / f"w2_{strategy}"  # a run dir: its `latest` checkpoint is used
    proc = run_command([sys.executable, "-m", "distlm", "consolidate", str(run_dir), str(out)])
    assert f"wrote {out}: 155,968 parameters (fp32)" in proc.output
    want = final_weights(matrix, f"w2_{strategy}")
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["step"] == str(STEPS) and f.metadata()["strategy"] == strategy
        assert set(f.keys()) == set(want)
        for key in want:
            assert torch.equal(f.get_tensor(key), want[key]), key


def test_consolidate_cli_names_what_is_missing(tmp_path):
    proc = run_command(
        [sys.executable, "-m", "distlm", "consolidate", str(tmp_path), str(tmp_path / "x.st")],
        check=False,
    )
    assert proc.returncode == 2
    assert (
        f"consolidate: error: {tmp_path}: not a checkpoint (no trainer_state.json)" in proc.output
    )


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_hugging_face_export_of_a_two_process_checkpoint(matrix, strategy, tmp_path):
    """`distlm export` of a sharded checkpoint: the consolidated weights, and transformers
    computes our logits from them (test_export.py checks export in depth)."""
    transformers = pytest.importorskip("transformers")
    from distlm.export.hf_export import checkpoint_model_config, export
    from distlm.export.hf_weights import from_hf
    from distlm.export.safetensors_folder import load_folder
    from distlm.model import build_model

    summary = export(matrix / f"w2_{strategy}", tmp_path / "hf")
    assert summary["step"] == STEPS
    weights, state = load_full_state_dict(Path(summary["checkpoint"]))
    assert (state["strategy"], state["world_size"]) == (strategy, 2)
    cfg = checkpoint_model_config(state)
    exported = from_hf(load_folder(tmp_path / "hf"), cfg)
    assert exported.keys() == weights.keys()
    assert all(torch.equal(exported[k], weights[k]) for k in weights)
    ours = build_model(cfg)
    ours.load_state_dict(weights)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokens = torch.arange(64)[None] * 7 % cfg.vocab_size
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5
