"""A sentencepiece tokenizer: training from a sample of the corpora, and the runtime wrapper.

Trained so that decode(encode(text)) == text for any text: identity normalization, no dummy
prefix, no whitespace squashing, byte fallback for characters outside the vocabulary. (One caveat
from sentencepiece itself: a literal U+2581 "▁" in the text decodes as a space.)
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from distlm.data import atomic_files
from distlm.data.errors import DataError
from distlm.data.readers import InputFile, ReadOptions, SourceStats, iter_piece_texts, normalize
from distlm.data.work_units import iter_units

MODEL_TYPES = ("bpe", "unigram")
MIN_CHARACTER_COVERAGE = 0.98  # sentencepiece refuses less (trainer_interface.cc)
BYTE_PIECES = 256  # what byte_fallback adds to the vocabulary


class Tokenizer:
    """encode / decode with the special ids the dataset was made with."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        import sentencepiece as spm

        self.path = Path(model_path)
        try:
            self.proto = self.path.read_bytes()
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        except (OSError, RuntimeError) as e:
            raise DataError(f"{self.path}: not a readable sentencepiece model ({e})") from None
        self.sha256 = hashlib.sha256(self.proto).hexdigest()
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids (int32) of each text; one thread, since parallelism is across processes."""
        return self.sp.encode_as_numpy(texts, num_threads=1)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self.sp.decode([int(i) for i in ids])


@dataclass(frozen=True)
class TokenizerTrainOptions:
    vocab_size: int = 32768  # pieces, specials and 256 byte-fallback pieces included
    model_type: str = "bpe"  # bpe | unigram
    byte_fallback: bool = True  # unknown characters become UTF-8 byte pieces, never <unk>
    character_coverage: float = 0.9995  # share of the sample's characters that get a piece
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 3
    sample_bytes: int = 200_000_000  # text sampled from the corpora to train on
    seed: int = 0  # which work units go into the sample
    train_threads: int = 4  # sentencepiece threads; fixed because the model depends on it
    unit_bytes: int = 1 << 20  # sampling granularity


def card_path(model_path: str | os.PathLike) -> Path:
    """tok/tokenizer.model -> tok/tokenizer_card.json (not tokenizer.json: Hugging Face's name)."""
    path = Path(model_path)
    return path.with_name(path.stem + "_card.json")


def find_card(model_path: str | os.PathLike) -> Path | None:
    """The card of `model_path` if there is one, under its name or the `.json` one used before."""
    for path in (card_path(model_path), Path(model_path).with_suffix(".json")):
        if path.is_file():
            return path
    return None


def _sample_sentences(
    inputs: list[InputFile], read: ReadOptions, opts: TokenizerTrainOptions, stats: dict
) -> Iterator[str]:
    """Lines of the documents of a seeded random subset of work units, up to sample_bytes."""
    total = sum(i.bytes for i in inputs)
    keep_prob = min(1.0, opts.sample_bytes / max(1, total))
    rng = np.random.Generator(np.random.PCG64(opts.seed))
    counts = SourceStats()
    for unit in iter_units(inputs, read, opts.unit_bytes):
        if rng.random() >= keep_prob:
            continue
        for piece in unit.pieces:
            for text in iter_piece_texts(piece, read, counts):
                doc = normalize(text, counts)
                if doc is None:
                    continue
                stats["documents"] += 1
                stats["bytes"] += len(doc[1])
                for line in doc[0].split("\n"):
                    if line.strip():
                        stats["lines"] += 1
                        yield line
        if stats["bytes"] >= opts.sample_bytes:
            return


def _vocab_too_small(
    need: int, out_path: str | os.PathLike, opts: TokenizerTrainOptions, sample: str
) -> DataError:
    """`need` = characters kept + byte pieces + special ids (sentencepiece's own sum)."""
    specials = sum(getattr(opts, k) >= 0 for k in ("unk_id", "bos_id", "eos_id", "pad_id"))
    byte_pieces = BYTE_PIECES if opts.byte_fallback else 0
    rarest_go_to = "byte pieces" if opts.byte_fallback else "<unk>"
    other_ways = []
    if opts.character_coverage > MIN_CHARACTER_COVERAGE:
        other_ways.append(
            f", or --character-coverage {MIN_CHARACTER_COVERAGE} (the least sentencepiece "
            f"takes) to leave the rarest characters to {rarest_go_to}"
        )
    if opts.byte_fallback:
        other_ways.append(
            f"; --no-byte-fallback needs {BYTE_PIECES} fewer but turns unseen characters into <unk>"
        )
    return DataError(
        f"--vocab-size {opts.vocab_size} is too small for {out_path}: {sample} has "
        f"{need - specials - byte_pieces} characters that character_coverage "
        f"{opts.character_coverage} keeps, and with {byte_pieces} byte pieces and {specials} "
        f"special ids the vocabulary needs at least {need} pieces. Pass --vocab-size {need} or "
        f"more (a language model wants far more than its characters){''.join(other_ways)}"
    )


def _training_error(
    message: str, out_path: str | os.PathLike, opts: TokenizerTrainOptions, stats: dict
) -> DataError:
    """sentencepiece's INTERNAL check failures as what to change, with the numbers it found."""
    docs = stats["documents"]
    sample = f"the sample of {stats['bytes']:,} bytes ({docs} document{'s' * (docs != 1)})"
    if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
        return _vocab_too_small(int(m[1]), out_path, opts, sample)
    if m := re.search(
        r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message
    ):
        return DataError(
            f"--vocab-size {opts.vocab_size} is more than sentencepiece can make from {sample} "
            f"for {out_path} (at most {m[1]}): pass --vocab-size {m[1]} or less, or train on "
            "more text (--sample-bytes, more inputs)"
        )
    return DataError(f"sentencepiece training for {out_path} failed: {message}")


def train_tokenizer(
    inputs: list[InputFile],
    out_path: str | os.PathLike,
    read: ReadOptions,
    opts: TokenizerTrainOptions,
) -> dict:
    """Train, write `out_path` (.model) and its card (card_path) atomically; return the card."""
    import sentencepiece as spm

    if opts.model_type not in MODEL_TYPES:
        raise DataError(f"model type {opts.model_type!r} is not one of {list(MODEL_TYPES)}")
    if not MIN_CHARACTER_COVERAGE <= opts.character_coverage <= 1.0:
        raise DataError(
            f"--character-coverage {opts.character_coverage} must be in "
            f"[{MIN_CHARACTER_COVERAGE}, 1.0] (sentencepiece's range)"
        )
    stats = {"documents": 0, "bytes": 0, "lines": 0}
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sample_sentences(inputs, read, opts, stats),
            model_writer=model,
            vocab_size=opts.vocab_size,
            model_type=opts.model_type,
            byte_fallback=opts.byte_fallback,
            character_coverage=opts.character_coverage,
            unk_id=opts.unk_id,
            bos_id=opts.bos_id,
            eos_id=opts.eos_id,
            pad_id=opts.pad_id,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # runs of indentation become single pieces
            split_digits=True,
            max_sentence_length=1 << 14,  # bytes; longer lines are left out of training
            num_threads=opts.train_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _training_error(str(e), out_path, opts, stats) from None
    if stats["documents"] == 0:
        raise DataError(f"no documents in the tokenizer sample of {[i.path for i in inputs]}")
    atomic_files.write_bytes(out_path, model.getvalue())
    card = {
        "model_file": Path(out_path).name,
        "sha256": hashlib.sha256(model.getvalue()).hexdigest(),
        "vocab_size": opts.vocab_size,
        "special_ids": {k: getattr(opts, k) for k in ("unk_id", "bos_id", "eos_id", "pad_id")},
        "options": asdict(opts),
        "sample": stats | {"input_files": len(inputs), "input_bytes": sum(i.bytes for i in inputs)},
    }
    atomic_files.write_json(card_path(out_path), card)
    return card
