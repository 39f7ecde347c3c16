"""Bits per byte: the validation loss in a unit that does not depend on the tokenizer.

    bpb = (sum over target tokens of -ln p(token)) / (ln 2 * bytes of the text those tokens encode)

The bytes come from a per-id table built from the sentencepiece vocabulary: a normal piece counts
the UTF-8 bytes of its text with "▁" (U+2581, 3 bytes) read as the one space it decodes to, a
byte-fallback piece `<0xNN>` is one byte, and control pieces (bos, eos, pad) and unk are zero.
With our tokenizers (identity normalization, no dummy prefix, byte fallback) the table's sum over
a document's ids equals the UTF-8 length of the document's source text (tested), so two runs with
different tokenizers report comparable figures. The eos after each document has 0 bytes but its
loss counts: predicting where a document ends is part of coding the text.
"""

from __future__ import annotations

import math

import torch

from distlm.data.tokenizer import Tokenizer

SPACE_MARK = "\u2581"  # sentencepiece's visible space


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """(vocab_size,) int64: bytes of source text each token id stands for."""
    sp = tokenizer.sp
    lengths = torch.zeros(tokenizer.vocab_size, dtype=torch.int64)
    for i in range(tokenizer.vocab_size):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        if sp.is_byte(i):  # <0xNN>
            lengths[i] = 1
        else:
            lengths[i] = len(sp.id_to_piece(i).replace(SPACE_MARK, " ").encode("utf-8"))
    return lengths


def bits_per_byte(loss_sum_nats: float, num_bytes: int) -> float:
    """Summed loss in nats over the bytes it covers -> bits per byte (nan when no bytes)."""
    return loss_sum_nats / (math.log(2) * num_bytes) if num_bytes else float("nan")
