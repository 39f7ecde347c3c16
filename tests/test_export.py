"""Hugging Face export and import, checked against transformers itself.

Two tiny models are trained once per module (GQA with tied embeddings and a padded vocabulary;
GQA with QK-norm and an untied head), exported, and loaded with `AutoModelForCausalLM`: the
logits equal ours, greedy generation gives the same tokens, the tokenizer gives the training
ids. `model.init_from=hf:DIR` followed by an export gives back the very same tensors. Exports
of 2-process FSDP2 and ZeRO-3 checkpoints are tested on the runs of test_parallel_equivalence.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_parallel_equivalence import tiny_overrides

from distlm.__main__ import main as distlm_main
from distlm.checkpoint import CheckpointError
from distlm.checkpoint.consolidate import load_full_state_dict
from distlm.config import ConfigError
from distlm.config_loader import load_config
from distlm.data.manifest import TOKENIZER_NAME
from distlm.data.tokenizer import Tokenizer, card_path, find_card
from distlm.export import ExportError
from distlm.export.hf_export import checkpoint_model_config, export
from distlm.export.hf_import import load_hf_weights
from distlm.export.hf_weights import from_hf, to_hf
from distlm.export.safetensors_folder import load_folder
from distlm.model import build_model
from distlm.train.trainer import train

transformers = pytest.importorskip("transformers")

MODELS = {
    # 512 tokens padded to 576 rows: the export keeps the rows and suppresses their ids
    "gqa_tied_padded": ["model.vocab_pad_multiple=96"],
    "gqa_qknorm_untied": ["model.qk_norm=true", "model.tie_embeddings=false"],
}
LOGIT_TOL = 1e-5  # fp32; measured <= 3e-6
TEXTS = [
    " leading space, then  two and\ttab",
    "\n\nnewlines first\n  indented\n",
    "unicode: é ü 中文 😀 and a literal ▁ piece marker",
    "rare bytes: \x00\x07 \u2028 \U0001f9ec \ufeff",
    "<s> specials as text </s> <pad> <unk> <0x41>",
    "",
    " ",
]


def cfg_args(data: Path, run_dir: Path, name: str, *extra: str) -> list[str]:
    """test_parallel_equivalence's tiny model and batches; checkpoint at the end, resume auto."""
    args = tiny_overrides(str(data), str(run_dir)) + MODELS[name]
    args += ["train.micro_batch_size=0", "checkpoint.every_steps=0", "checkpoint.resume=auto"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (run dir trained 4 steps, its export)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in MODELS:
        run_dir = root / name
        train(load_config(cfg_args(tiny_dataset, run_dir, name, "train.steps=4")))
        export(run_dir, root / f"{name}-hf")
        out[name] = (run_dir, root / f"{name}-hf")
    return out


def ours_from(run_dir: Path):
    weights, state = load_full_state_dict(run_dir)
    model = build_model(checkpoint_model_config(state))
    model.load_state_dict(weights)
    return model.eval()


def hf_model(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def greedy(model, prompt: list[int], n: int, vocab_size: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([tokens]))[0, -1, :vocab_size]  # padding rows cut
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("name", MODELS)
def test_transformers_gives_our_logits_and_greedy_tokens(exported, name):
    run_dir, folder = exported[name]
    ours, hf = ours_from(run_dir), hf_model(folder)
    cfg = ours.cfg
    expected = "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len), generator=torch.Generator())
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= LOGIT_TOL, diff

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = tok("def main(argv):\n    ").input_ids
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    assert hf_out[0, len(prompt) :].tolist() == greedy(ours, prompt, 16, cfg.vocab_size)
    if hf.config.vocab_size > cfg.vocab_size:  # padding rows made to win: still never generated
        head = hf.get_output_embeddings().weight
        with torch.no_grad():
            head[cfg.vocab_size :] = 100 * head[: head.shape[0] - cfg.vocab_size]
        assert hf.generate(torch.tensor([prompt]), max_new_tokens=8).max() < cfg.vocab_size


def test_config_and_generation_config(exported):
    _, folder = exported["gqa_tied_padded"]
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 576 and config["tie_word_embeddings"] is True
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["suppress_tokens"] == list(range(512, 576))  # never an id with no piece
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 3)
    qk = json.loads((exported["gqa_qknorm_untied"][1] / "config.json").read_text())
    assert qk["model_type"] == "qwen3" and qk["tie_word_embeddings"] is False
    assert qk["layer_types"] == ["full_attention"] * 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_tokenizer_gives_the_training_ids(exported, tiny_dataset):
    ours = Tokenizer(tiny_dataset / TOKENIZER_NAME)
    hf = transformers.AutoTokenizer.from_pretrained(exported["gqa_tied_padded"][1])
    corpus = sorted((tiny_dataset.parent / "corpus").glob("*.txt"))[:8]
    texts = TEXTS + [p.read_text() for p in corpus]
    # pretokenize's workers call encode_batch: the ids in the shards
    for text, ids in zip(texts, ours.encode_batch(texts), strict=True):
        assert hf(text).input_ids == ids.tolist(), text[:80]
        assert hf.decode(ids.tolist()) == ours.decode(ids) == text.replace("▁", " ")
    assert hf.encode("x") == ours.encode("x")  # no bos, no eos added
    specials = ("unk", "bos", "eos", "pad")
    assert [getattr(hf, f"{k}_token_id") for k in specials] == [0, 1, 2, 3]
    assert [ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id] == [0, 1, 2, 3]
    assert len(hf) == ours.vocab_size == 512


def test_unigram_tokenizer_keeps_specials_and_bytes_as_text(tmp_path, tiny_dataset):
    """Unigram's lattice would match '<s>' or '<0x41>' pieces; sentencepiece never does."""
    from distlm.data.readers import InputFile, ReadOptions
    from distlm.data.tokenizer import TokenizerTrainOptions, train_tokenizer
    from distlm.export.hf_tokenizer import tokenizer_files

    src = sorted((tiny_dataset.parent / "corpus").glob("*.txt"))[:3]
    model = tmp_path / "uni.model"
    opts = TokenizerTrainOptions(vocab_size=400, model_type="unigram", train_threads=1)
    train_tokenizer(
        [InputFile(str(p), "txt", p.stat().st_size) for p in src],
        model,
        ReadOptions(txt_mode="file"),
        opts,
    )
    for name, obj in tokenizer_files(model, 64).items():
        (tmp_path / name).write_text(json.dumps(obj))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer(model)
    for text in TEXTS:
        assert hf(text).input_ids == ours.encode(text), text


def test_import_then_export_is_the_identity(exported, tiny_dataset, tmp_path):
    """HF folder -> model.init_from -> one step at lr 1e-30 (below the fp32 spacing of every
    weight: none moves) -> checkpoint -> export: the same tensors, bit for bit; then a resume
    does not read the folder again."""
    for name in ["gqa_qknorm_untied"]:  # every kind of tensor; the padded rows: next test
        folder = exported[name][1]
        copy = tmp_path / f"{name}-in"
        shutil.copytree(folder, copy)
        run_dir = tmp_path / f"{name}-run"
        args = cfg_args(tiny_dataset, run_dir, name, f"model.init_from=hf:{copy}")
        train(load_config([*args, "train.steps=1", "train.lr=1e-30", "train.warmup_steps=0"]))
        export(run_dir, tmp_path / f"{name}-out")
        before, after = load_folder(folder), load_folder(tmp_path / f"{name}-out")
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name

        # a resumed run loads its checkpoint: the folder is not read again (here: gone), and
        # model.init_from may change or go (it says where step 0 came from, not the model)
        shutil.rmtree(copy)
        args += ["train.lr=1e-30", "train.warmup_steps=0"]
        assert train(load_config([*args, "train.steps=2"])).final_step == 2
        assert train(load_config([*args, "train.steps=3", "model.init_from="])).final_step == 3


def test_init_from_weights_round_trip_function_level(exported):
    run_dir, folder = exported["gqa_tied_padded"]
    weights, state = load_full_state_dict(run_dir)
    cfg = checkpoint_model_config(state)
    model = build_model(cfg)
    assert load_hf_weights(model, folder) == len(weights)
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    assert all(torch.equal(from_hf(to_hf(weights, cfg), cfg)[k], v) for k, v in weights.items())


def test_init_from_another_shape_is_refused_before_step_0(exported, tiny_dataset, tmp_path):
    _, folder = exported["gqa_tied_padded"]
    args = cfg_args(
        tiny_dataset, tmp_path / "run", "gqa_tied_padded", f"model.init_from=hf:{folder}"
    )
    with pytest.raises(ExportError) as e:
        train(load_config([*args, "model.d_model=128", "model.n_kv_heads=4", "model.qk_norm=true"]))
    assert str(e.value) == (
        f"{folder}/config.json: the model there does not fit this run's model config; set "
        "model.d_model=64 (this run: 128), model.n_kv_heads=2 (this run: 4), "
        "model.ffn_hidden=256 (this run: 512), model.qk_norm=False (this run: True)"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"model.init_from='runs/x': expected hf:DIR"):
        train(load_config([*args[:-1], "model.init_from=runs/x"]))


def test_cli_bf16_sharded_export_and_refusals(exported, tmp_path, capsys):
    run_dir, _ = exported["gqa_qknorm_untied"]
    out = tmp_path / "hf"
    cmd = ["export", str(run_dir), str(out)]
    assert distlm_main([*cmd, "--dtype", "bf16", "--max-shard-size", "150KB"]) == 0
    assert "Qwen3ForCausalLM" in capsys.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16
    tokens = torch.arange(32)[None]
    with torch.no_grad():
        diff = (ours_from(run_dir)(tokens) - hf.float()(tokens).logits).abs().max().item()
    assert diff < 0.1, diff  # bf16 weights
    ours = ours_from(run_dir)  # the sharded bf16 folder imports as the bf16-rounded weights
    want = {k: v.to(torch.bfloat16).float() for k, v in ours.state_dict().items()}
    assert load_hf_weights(ours, out) == len(want)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in want.items())

    assert distlm_main(cmd) == 2
    err = capsys.readouterr().err
    assert f"export: error: {out}: already exists; choose a new output directory" in err
    assert (
        distlm_main(["export", str(run_dir), str(tmp_path / "x"), "--max-shard-size", "5XB"]) == 2
    )
    err = capsys.readouterr().err
    assert "export: error: --max-shard-size '5XB': expected a positive size such as 5GB" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left


def test_bad_inputs_name_the_file(exported, tmp_path, tiny_dataset):
    run_dir, _ = exported["gqa_tied_padded"]
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not a checkpoint"):
        export(tmp_path, tmp_path / "out")
    other = tmp_path / "tok.model"
    other.write_bytes((tiny_dataset / TOKENIZER_NAME).read_bytes()[:100])
    with pytest.raises(ExportError, match="tok.model: not a readable sentencepiece model"):
        export(run_dir, tmp_path / "out", tokenizer=other)
    # a checkpoint whose weights are not those of its recorded model config
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "checkpoints" / "step-00000004", ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["model_config"]["n_layers"] = 3
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ExportError, match=r"a checkpoint of another model\?\): layers.2.*missing"):
        export(ckpt, tmp_path / "out")
    state["model_config"] |= {"n_layers": 2, "vocab_size": 520}  # still 576 rows
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ExportError, match="512 pieces, but .* model.vocab_size=520"):
        export(ckpt, tmp_path / "out", tokenizer=tiny_dataset / TOKENIZER_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tok.model"]


def test_tokenizer_card_is_not_named_like_hugging_face(tiny_dataset, tmp_path):
    assert (tiny_dataset / "tokenizer_card.json").is_file()
    assert not (tiny_dataset / "tokenizer.json").exists()
    model = tmp_path / "tokenizer.model"
    model.write_bytes(b"")
    assert card_path(model) == tmp_path / "tokenizer_card.json" and find_card(model) is None
    (tmp_path / "tokenizer.json").write_text("{}")  # a card written before the rename
    assert find_card(model) == tmp_path / "tokenizer.json"
    (tmp_path / "tokenizer_card.json").write_text("{}")
    assert find_card(model) == tmp_path / "tokenizer_card.json"


def test_init_from_refuses_what_our_block_lacks(exported, tmp_path):
    run_dir, folder = exported["gqa_tied_padded"]
    copy = tmp_path / "llama3"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.pop("rope_parameters")
    config |= {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "attention_bias": True}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError) as e:
        load_hf_weights(ours_from(run_dir), copy)
    assert str(e.value) == (
        f"{copy}/config.json: not a model distlm can load: attention_bias=true; "
        "RoPE scaling 'llama3'"
    )
    (copy / "config.json").unlink()
    with pytest.raises(ExportError, match=f"{copy}/config.json: missing; expected a Hugging"):
        load_hf_weights(ours_from(run_dir), copy)
