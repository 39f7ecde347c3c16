"""Multiple-choice evaluation end to end: a trained tiny model passes a task an untrained one
fails; in-loop, `distlm eval` at 1 and 2 processes, and lm-evaluation-harness on the Hugging Face
export all give the same accuracy.

The task (tests/eval_task_maker.py): continue 32 tokens of the training corpus with its next 6
tokens, against the same 6 tokens shuffled. Chance is 0.25; measured on this module's models:
untrained 0.17-0.20 (three seeds), trained 150 steps 0.90.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VOCAB
from dist_utils import run_command, torchrun
from eval_task_maker import make_task
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distlm.config_loader import load_config
from distlm.data import load_tokenizer
from distlm.eval.cli import load_checkpoint_model
from distlm.eval.multiple_choice import build_requests, evaluate_task, score_requests
from distlm.eval.tasks import load_task
from distlm.model import build_model
from distlm.train.trainer import train

BATCH = 7  # pairs per forward: 240 pairs -> 35 batches, split 18 / 17 over 2 ranks
TRAIN = [
    f"model.vocab_size={TINY_VOCAB}",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "train.seq_len=64",
    "train.global_batch_tokens=2048",
    "train.lr=1e-2",
    "train.warmup_steps=10",
    "train.steps=150",
    "train.eval_every_steps=0",
    "train.eval_batches=1",
    "train.sample_tokens=0",
    "logging.log_every_steps=50",
    "checkpoint.every_steps=0",
    "eval.every_steps=0",  # tasks at the last step only
    f"eval.batch_size={BATCH}",
]


@pytest.fixture(scope="module")
def task_file(tiny_dataset, tmp_path_factory) -> Path:
    corpus = sorted((tiny_dataset.parent / "corpus").glob("*.txt"))
    out = tmp_path_factory.mktemp("task") / "probe.jsonl"
    return make_task(corpus, load_tokenizer(str(tiny_dataset)), out, n=60)


@pytest.fixture(scope="module")
def trained(tiny_dataset, task_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mc_run")
    args = [*TRAIN, f"data.path={tiny_dataset}", f"logging.run_dir={run_dir}"]
    with one_thread():
        train(load_config([*args, f"eval.tasks=[{task_file}]"]))
    return run_dir


@contextlib.contextmanager
def one_thread():
    """d_model 64: a second thread only adds synchronisation (and spins on a loaded machine:
    83 s instead of 15 s for the 150 training steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def in_loop_metrics(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if "eval_probe/acc" in r)


def test_untrained_model_is_at_chance(tiny_dataset, task_file):
    task, tokenizer = load_task(task_file), load_tokenizer(str(tiny_dataset))
    cfg = load_config(TRAIN).model
    for seed in (0, 1):
        torch.manual_seed(seed)
        with one_thread():
            scores = evaluate_task(build_model(cfg), task, tokenizer, 64, BATCH)
        assert scores["acc"] < 0.45, scores  # chance 0.25; measured 0.17-0.20


def test_trained_model_beats_chance_and_logs_in_loop(trained):
    row = in_loop_metrics(trained)
    assert row["step"] == 150
    assert row["eval_probe/acc"] > 0.6, row  # measured 0.90
    assert row["eval_probe/acc_norm"] > 0.6, row
    acc = EventAccumulator(str(trained / "tensorboard"))
    acc.Reload()
    assert {"eval/probe/acc", "eval/probe/acc_norm"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("eval/probe/acc")[-1].value == pytest.approx(row["eval_probe/acc"])


def _cli_eval(run_dir: Path, task_file: Path, out: Path, nproc: int) -> dict:
    args = ["-m", "distlm", "eval", str(run_dir), "--task", str(task_file)]
    args += ["--batch-size", str(BATCH), "--out", str(out)]
    if nproc == 1:
        proc = run_command([sys.executable, *args])
    else:
        proc = torchrun(args, nproc=nproc)
    assert "probe" in proc.output and "acc_norm" in proc.output
    return json.loads(out.read_text())


def test_distlm_eval_at_1_and_2_processes_equals_the_in_loop_result(trained, task_file, tmp_path):
    one = _cli_eval(trained, task_file, tmp_path / "one.json", nproc=1)
    two = _cli_eval(trained, task_file, tmp_path / "two.json", nproc=2)
    assert one["step"] == 150 and one["tasks"]["probe"]["examples"] == 60
    assert one["tasks"] == two["tasks"]
    row = in_loop_metrics(trained)
    assert one["tasks"]["probe"]["acc"] == row["eval_probe/acc"]
    assert one["tasks"]["probe"]["acc_norm"] == row["eval_probe/acc_norm"]


def test_in_loop_eval_of_a_sharded_model_on_2_ranks(tiny_dataset, task_file, tmp_path):
    """FSDP2 needs every rank in every forward: rank 0 scores 18 batches, rank 1 17 + a spare."""
    steps = [a for a in TRAIN if not a.startswith("train.steps")] + ["train.steps=3"]
    args = [*steps, "train.warmup_steps=1", "parallel.strategy=fsdp2", "train.device=cpu"]
    args += [f"data.path={tiny_dataset}", f"logging.run_dir={tmp_path}"]
    torchrun(["launch/train.py", *args, f"eval.tasks=[{task_file}]"], nproc=2)
    row = in_loop_metrics(tmp_path)
    model, cfg, _ = load_checkpoint_model(tmp_path, torch.device("cpu"))
    task = load_task(task_file)
    alone = evaluate_task(model, task, load_tokenizer(str(tiny_dataset)), cfg.train.seq_len, BATCH)
    assert (row["step"], row["eval_probe/acc"], row["eval_probe/acc_norm"]) == (
        3,
        alone["acc"],
        alone["acc_norm"],
    )


LM_EVAL_TASK = """\
task: distlm_probe
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: endings
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_lm_eval_on_the_export_gives_our_accuracy_offline(trained, task_file, tmp_path):
    from distlm.export.hf_export import export

    hf_dir = tmp_path / "hf"
    export(trained, hf_dir)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "distlm_probe.yaml").write_text(LM_EVAL_TASK.format(data=task_file))
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    lm_eval = str(Path(sys.executable).parent / "lm_eval")
    cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32"]
    cmd += ["--tasks", "distlm_probe", "--include_path", str(tasks), "--device", "cpu"]
    cmd += ["--batch_size", "8", "--output_path", str(tmp_path / "out"), "--log_samples"]
    run_command(cmd, timeout_s=600, env=offline)
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    theirs = results["results"]["distlm_probe"]
    ours = in_loop_metrics(trained)
    assert theirs["acc,none"] == ours["eval_probe/acc"]
    assert theirs["acc_norm,none"] == ours["eval_probe/acc_norm"]

    # per pair: lm-eval's log-likelihoods are ours (same tokens, same weights, fp32)
    model, cfg, _ = load_checkpoint_model(trained, torch.device("cpu"))
    task = load_task(task_file)
    requests = build_requests(task, load_tokenizer(cfg.data.path), cfg.train.seq_len)
    loglik = score_requests(model, requests, 8)
    mine = {(r.example, r.ending): ll for r, ll in zip(requests, loglik, strict=True)}
    samples = [json.loads(x) for x in next((tmp_path / "out").rglob("samples_*.jsonl")).open()]
    assert len(samples) == 60
    for s in samples:
        for j, resp in enumerate(s["filtered_resps"]):
            assert float(resp[0]) == pytest.approx(mine[(s["doc_id"], j)], abs=1e-4)
    assert os.environ.get("HF_HUB_OFFLINE") is None  # the offline switch stayed in the child
