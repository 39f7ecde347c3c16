"""Multiple-choice accuracy by log-likelihood, batched and spread over ranks.

Each (example, ending) pair is one request: the log-likelihood of the ending's tokens given the
context, encoded exactly as lm-evaluation-harness encodes it for causal models, so that both give
the same numbers: trailing spaces of the context move to the ending; the input is
`encode(context)` followed by the tokens of `encode(context + ending)` after its first
`len(encode(context))` (when a merge crosses the boundary this repeats or drops a character, as
lm-eval does); inputs longer than `max_len` lose their oldest tokens. An empty context becomes
the eos token, the document boundary the model saw before every document (lm-eval uses bos).
Two accuracies per task, as lm-eval's:

    acc       argmax over endings of the summed log-likelihood
    acc_norm  argmax of the log-likelihood divided by the ending's length in characters

Requests are sorted by length (longest first) and cut into batches of `batch_size`; rank r scores
batches r, r + W, r + 2W, ... Each request is always scored in the same batch, whatever the world
size, so 1 and N processes give the same log-likelihoods; one all-reduce gathers them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distlm.data.tokenizer import Tokenizer
from distlm.eval.tasks import Task


@dataclass(frozen=True)
class Request:
    example: int  # index of the example in its task
    ending: int  # index of the ending in the example
    tokens: tuple[int, ...]  # context + ending, left-truncated to max_len + 1
    num_scored: int  # the last num_scored tokens are the ending's


def build_requests(task: Task, tokenizer: Tokenizer, max_len: int) -> list[Request]:
    """Token the pairs of a task; contexts longer than `max_len` lose their oldest tokens."""
    requests = []
    for i, ex in enumerate(task.examples):
        for j, ending in enumerate(ex.endings):
            context, continuation = ex.context, ending
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            if context:
                ctx = tokenizer.encode(context)
                cont = tokenizer.encode(context + continuation)[len(ctx) :]
            else:
                ctx, cont = [tokenizer.eos_id], tokenizer.encode(continuation)
            tokens = (ctx + cont)[-(max_len + 1) :]
            requests.append(Request(i, j, tuple(tokens), min(len(cont), len(tokens) - 1)))
    return requests


def _score_batch(
    model: nn.Module, batch: list[Request], autocast: Callable, device: torch.device
) -> torch.Tensor:
    """Summed log-probabilities of each request's scored tokens -> (len(batch),) float64."""
    width = max(1, max(len(r.tokens) for r in batch) - 1)
    inputs = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T), right-padded
    targets = torch.zeros(len(batch), width, dtype=torch.long)
    scored = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, r in enumerate(batch):
        n = len(r.tokens) - 1
        seq = torch.tensor(r.tokens, dtype=torch.long)
        inputs[row, :n], targets[row, :n] = seq[:-1], seq[1:]
        scored[row, n - r.num_scored : n] = True
    with autocast():
        logits = model(inputs.to(device))  # (B, T, V); causal, so padding never leaks left
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked.double() * scored.to(device)).sum(dim=1)


@torch.no_grad()
def score_requests(
    model: nn.Module,
    requests: list[Request],
    batch_size: int,
    autocast: Callable = contextlib.nullcontext,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Log-likelihood of every request, in request order, on every rank."""
    device = torch.device(device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].tokens), i))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    rounds = -(-len(batches) // world)  # every rank runs as many forwards (sharded models)
    totals = torch.zeros(len(requests), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for k in range(rank, rounds * world, world):
        ids = batches[k] if k < len(batches) else batches[0]  # a spare forward, result dropped
        values = _score_batch(model, [requests[i] for i in ids], autocast, device)
        if k < len(batches):
            totals[torch.tensor(ids, device=device)] = values
    model.train(was_training)
    if world > 1:
        dist.all_reduce(totals)  # each request was scored on exactly one rank
    return totals.tolist()


def accuracy(task: Task, requests: list[Request], loglik: list[float]) -> dict[str, float]:
    """acc and acc_norm (by the ending's characters) of a task from its requests' scores."""
    scores: list[list[float]] = [[0.0] * len(ex.endings) for ex in task.examples]
    for r, ll in zip(requests, loglik, strict=True):
        scores[r.example][r.ending] = ll
    acc = acc_norm = 0
    for ex, s in zip(task.examples, scores, strict=True):
        norm = [v / len(e) for v, e in zip(s, ex.endings, strict=True)]
        acc += max(range(len(s)), key=s.__getitem__) == ex.label  # first index wins a tie
        acc_norm += max(range(len(norm)), key=norm.__getitem__) == ex.label
    n = len(task.examples)
    return {"acc": acc / n, "acc_norm": acc_norm / n}


def evaluate_task(
    model: nn.Module,
    task: Task,
    tokenizer: Tokenizer,
    max_len: int,
    batch_size: int,
    autocast: Callable = contextlib.nullcontext,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    requests = build_requests(task, tokenizer, max_len)
    return accuracy(task, requests, score_requests(model, requests, batch_size, autocast, device))
