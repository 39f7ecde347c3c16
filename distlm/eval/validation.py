"""Validation: loss, perplexity and bits per byte of the val split; each dataset of a mixture too.

The val set is the first `train.eval_batches` global batches of the `val/` split (the same every
time, at any world size). For a mixture (`data.path=dirA:0.7,dirB:0.3`) `loss`, `perplexity` and
`bpb` are those of the mixed val stream, and every dataset is also evaluated alone on its own
first `train.eval_batches` batches (`<name>/loss`, `<name>/bpb`, `<name>` the directory's name),
so a dataset of small weight is still judged on as many tokens as the others.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distlm.config import DataConfig
from distlm.data import build_val_loader, load_tokenizer
from distlm.data.loader import ValLoader
from distlm.data.mixture import parse_mixture
from distlm.eval.bpb import bits_per_byte, token_byte_lengths

LOGITS_BUDGET_BYTES = 256 << 20  # fp32 logits held at once; larger micro-batches go in row chunks


def dataset_names(data_path: str) -> list[str]:
    """Metric names of a mixture's datasets: directory names, or the paths if those collide."""
    paths = [p for p, _ in parse_mixture(data_path)]
    names = [Path(p).name or p for p in paths]
    return names if len(set(names)) == len(names) else paths


@torch.no_grad()
def evaluate(
    model: nn.Module,
    val_loader: ValLoader,
    byte_lengths: torch.Tensor,
    autocast: Callable = contextlib.nullcontext,
) -> tuple[float, float]:
    """(mean loss per token in nats, bits per byte) over every rank's part of the val batches.

    `byte_lengths` is `token_byte_lengths(tokenizer)`: (vocab_size,) bytes per token id.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=byte_lengths.device)  # nats, tokens, bytes
    for inputs, targets in val_loader:  # each (micro, T)
        rows = max(1, LOGITS_BUDGET_BYTES // (4 * targets.shape[1] * len(byte_lengths)))
        for x, y in zip(inputs.split(rows), targets.split(rows), strict=True):
            with autocast():
                logits = model(x)  # (rows, T, V)
            nats = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
            num_bytes = byte_lengths.to(y.device)[y].sum()
            totals += torch.stack([nats, nats.new_tensor(y.numel()), num_bytes.to(nats)]).double()
    model.train(was_training)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    nats, tokens, num_bytes = totals.tolist()
    return (nats / tokens if tokens else float("nan")), bits_per_byte(nats, int(num_bytes))


class Validation:
    """The val loaders of a run and the byte table of its tokenizer; `run()` gives the scalars."""

    def __init__(self, loaders: dict[str, ValLoader], byte_lengths: torch.Tensor) -> None:
        self.loaders = loaders  # "" -> the (mixed) val stream; name -> one dataset alone
        self.byte_lengths = byte_lengths

    def run(self, model: nn.Module, autocast: Callable = contextlib.nullcontext) -> dict:
        scalars = {}
        for name, loader in self.loaders.items():
            loss, bpb = evaluate(model, loader, self.byte_lengths, autocast)
            if not name:
                scalars.update(loss=loss, perplexity=math.exp(min(loss, 50)), bpb=bpb)
            else:
                scalars.update({f"{name}/loss": loss, f"{name}/bpb": bpb})
        return scalars


def build_validation(cfg: DataConfig, num_batches: int, **data_args) -> Validation | None:
    """Open every val split (DataError before step 0), or None when `data.val_split` is ""."""
    main = build_val_loader(cfg, num_batches=num_batches, **data_args)
    if main is None:
        return None
    loaders = {"": main}
    entries = parse_mixture(cfg.path)
    if len(entries) > 1:
        for name, (path, _) in zip(dataset_names(cfg.path), entries, strict=True):
            one = replace(cfg, path=path)
            loaders[name] = build_val_loader(one, num_batches=num_batches, **data_args)
    byte_lengths = token_byte_lengths(load_tokenizer(cfg.path)).to(data_args["device"])
    return Validation(loaders, byte_lengths)
