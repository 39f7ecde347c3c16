"""Task files: the jsonl form is read exactly, and every bad line is refused naming file:line."""

import json

import pytest

from distlm.config import ConfigError
from distlm.config_loader import load_config
from distlm.eval.multiple_choice import Request, accuracy
from distlm.eval.tasks import EvalError, Example, load_task
from distlm.train.trainer import train

GOOD = {"context": "x = 1\n", "endings": ["y = 2", "y = 22"], "label": 1}


def write(path, *lines: str):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_examples_skips_blank_lines_and_caps_max_examples(tmp_path):
    other = {**GOOD, "label": 0, "id": "extra fields are ignored"}
    path = write(tmp_path / "t.jsonl", json.dumps(GOOD), "", json.dumps(other), json.dumps(GOOD))
    task = load_task(path)
    assert task.name == "t" and len(task.examples) == 3
    assert task.examples[0] == Example("x = 1\n", ("y = 2", "y = 22"), 1)
    assert len(load_task(path, max_examples=2).examples) == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"context": "a", "endings": ["b", "c"]}', r"t.jsonl:2: missing field 'label'"),
        ('{"endings": ["b", "c"], "label": 0}', r"t.jsonl:2: missing field 'context'"),
        ('{"context": "a", "endings": ["b", "c"], "label": 2}', r"t.jsonl:2: label 2 is out"),
        ('{"context": "a", "endings": ["b", "c"], "label": -1}', r"t.jsonl:2: label -1 is out"),
        ('{"context": "a", "endings": ["b", "c"], "label": "0"}', r"t.jsonl:2: 'label' must be"),
        ('{"context": "a", "endings": ["b", "c"], "label": true}', r"t.jsonl:2: 'label' must be"),
        ('{"context": "a", "endings": "bc", "label": 0}', r"t.jsonl:2: 'endings' must be a list"),
        ('{"context": "a", "endings": ["b"], "label": 0}', r"t.jsonl:2: 'endings' must be a list"),
        ('{"context": "a", "endings": ["b", ""], "label": 0}', r"t.jsonl:2: endings\[1\] must"),
        ('{"context": 3, "endings": ["b", "c"], "label": 0}', r"t.jsonl:2: 'context' must be"),
        ('{"context": "a", "endings": ["b", "c"], "label": 0', r"t.jsonl:2: not valid JSON"),
        ('["a", ["b", "c"], 0]', r"t.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "t.jsonl", json.dumps(GOOD), line)
    with pytest.raises(EvalError, match=message):
        load_task(path)


def test_empty_and_missing_files_are_refused(tmp_path):
    with pytest.raises(EvalError, match=r"empty.jsonl: no examples"):
        load_task(write(tmp_path / "empty.jsonl", "", "  "))
    with pytest.raises(EvalError, match=r"nope.jsonl: no such task file"):
        load_task(tmp_path / "nope.jsonl")


def test_accuracy_sums_and_normalises_by_characters(tmp_path):
    # ending 0: 2 chars, ll -2 (-1/char); ending 1: 10 chars, ll -5 (-0.5/char)
    path = write(
        tmp_path / "t.jsonl", json.dumps({"context": "c", "endings": ["ab", "a" * 10], "label": 1})
    )
    task = load_task(path)
    requests = [Request(0, 0, (1, 2), 1), Request(0, 1, (1, 2), 1)]
    assert accuracy(task, requests, [-2.0, -5.0]) == {"acc": 0.0, "acc_norm": 1.0}
    assert accuracy(task, requests, [-5.0, -5.0]) == {"acc": 0.0, "acc_norm": 1.0}  # tie: first


def test_trainer_refuses_a_bad_task_file_before_step_0(tiny_dataset, tmp_path):
    bad = write(tmp_path / "bad.jsonl", json.dumps(GOOD), '{"context": "a", "endings": ["b", "c"]}')
    args = [
        f"data.path={tiny_dataset}",
        f"logging.run_dir={tmp_path / 'run'}",
        "model.vocab_size=512",
    ]
    with pytest.raises(EvalError, match=r"bad.jsonl:2: missing field 'label'"):
        train(load_config([*args, f"eval.tasks=[{bad}]"]))
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"eval.batch_size=0 must be >= 1"):
        train(load_config([*args, f"eval.tasks=[{bad}]", "eval.batch_size=0"]))
