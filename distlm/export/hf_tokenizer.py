"""Our sentencepiece model as a Hugging Face fast tokenizer (`tokenizer.json`) with the same ids.

Written as plain JSON in the `tokenizers` library's format, so exporting needs neither
`tokenizers` nor `transformers`. What makes the ids equal to those the model was trained on
(`distlm.data.tokenizer` trains with identity normalization, no dummy prefix, byte fallback):
- normalizer: only " " -> "▁" (sentencepiece's whitespace escape); no prefix space, no NFKC;
- BPE: every normal piece, merges in sentencepiece's piece-score order (sentencepiece merges
  the adjacent pair whose concatenation scores highest), `byte_fallback` for characters outside
  the vocabulary: the same ids (tests/test_export.py). Unigram: the pieces and scores themselves;
  Viterbi near-ties can still split otherwise, since the two libraries sum scores at different
  precisions (measured: 2 places in 1 MB of Python source at vocab 1000);
- no post-processor and `add_bos_token=false`: encode() adds nothing (documents were encoded
  without bos; eos is appended by pretokenize, not by the tokenizer);
- `split_special_tokens=true`: a literal "<s>" in text is text, as in sentencepiece, not bos.
"""

from __future__ import annotations

from pathlib import Path

from distlm.export.errors import ExportError

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
SPECIAL_IDS = ("unk", "bos", "eos", "pad")


def read_sentencepiece(path: Path):
    """The parsed ModelProto of a sentencepiece .model file."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except (OSError, DecodeError) as e:
        raise ExportError(f"{path}: not a readable sentencepiece model ({e})") from None
    if not proto.pieces:
        raise ExportError(f"{path}: not a sentencepiece model (no pieces)")
    return proto


def _check_supported(proto, path: Path) -> None:
    """Refuse settings whose Hugging Face equivalent would give other ids than training."""
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    wrong = []
    if norm.name != "identity" or norm.precompiled_charsmap:
        wrong.append(f"normalization {norm.name!r} (expected 'identity')")
    if norm.add_dummy_prefix:
        wrong.append("add_dummy_prefix=true")
    if norm.remove_extra_whitespaces:
        wrong.append("remove_extra_whitespaces=true")
    if not norm.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        wrong.append("whitespace not escaped as a '▁' prefix")
    if trainer.model_type not in (BPE, UNIGRAM):
        wrong.append(f"model type {trainer.model_type} (expected BPE or unigram)")
    if any(p.type == USER_DEFINED for p in proto.pieces):
        wrong.append("user-defined pieces")
    if wrong:
        raise ExportError(
            f"{path}: this sentencepiece model cannot be exported with the same ids: "
            f"{', '.join(wrong)}. Tokenizers trained by data_tools.tokenizer are supported"
        )


def special_tokens(proto) -> dict[str, tuple[int, str]]:
    """{'unk': (id, piece), 'bos': ..., ...} for the special ids the model defines (id >= 0)."""
    t = proto.trainer_spec
    ids = {"unk": t.unk_id, "bos": t.bos_id, "eos": t.eos_id, "pad": t.pad_id}
    return {k: (i, proto.pieces[i].piece) for k, i in ids.items() if 0 <= i < len(proto.pieces)}


def _bpe_merges(proto) -> list[list[str]]:
    """Every (left, right) split of a normal piece into two normal pieces, ranked by the score
    of the merged piece (highest first), then by piece id: sentencepiece's merge order."""
    normal = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-proto.pieces[i].score, i, normal[left], normal[right], left, right))
    return [[left, right] for *_, left, right in sorted(ranked)]


def _model_json(proto) -> dict:
    unk_id = proto.trainer_spec.unk_id
    if proto.trainer_spec.model_type == UNIGRAM:
        # sentencepiece never matches control or byte pieces in text; Hugging Face's lattice
        # matches every piece, so those get a score no segmentation of known characters loses to
        floor = min(p.score for p in proto.pieces if p.type == NORMAL) - 100.0
        return {
            "type": "Unigram",
            "unk_id": unk_id,
            "vocab": [[p.piece, p.score if p.type == NORMAL else floor] for p in proto.pieces],
            "byte_fallback": proto.trainer_spec.byte_fallback,
        }
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": proto.pieces[unk_id].piece,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": proto.trainer_spec.byte_fallback,
        "ignore_merges": False,
        "vocab": {p.piece: i for i, p in enumerate(proto.pieces)},
        "merges": _bpe_merges(proto),
    }


def tokenizer_files(model_path: Path, max_length: int) -> dict[str, dict]:
    """{file name: JSON object} of the Hugging Face tokenizer equivalent to `model_path`."""
    proto = read_sentencepiece(model_path)
    _check_supported(proto, Path(model_path))
    specials = special_tokens(proto)
    added = [
        {
            "id": i,
            "content": p.piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, p in enumerate(proto.pieces)
        if p.type in (UNKNOWN, CONTROL)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": _model_json(proto),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{k}_token": piece for k, (_, piece) in specials.items()},
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}
