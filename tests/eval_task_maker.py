"""A multiple-choice task a model can only pass by having learned its text (tests' helper).

Each example is a window of a corpus document: the context is 32 tokens, the right ending the 6
tokens that follow, the wrong endings the same 6 tokens in shuffled orders. All endings have the
same characters and re-encode to the same number of tokens after the context, so a model that
knows nothing (near-uniform next-token probabilities) picks at chance, while one that has learned
the order of Python source text picks the right ending.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from distlm.data.tokenizer import Tokenizer
from distlm.eval.multiple_choice import build_requests
from distlm.eval.tasks import Example, Task

CONTEXT_TOKENS, ENDING_TOKENS, NUM_ENDINGS = 32, 6, 4


def _candidate(tokenizer: Tokenizer, ids: list[int], rng: random.Random) -> Example | None:
    sp = tokenizer.sp
    p = rng.randrange(CONTEXT_TOKENS, len(ids) - ENDING_TOKENS)
    ending_ids = ids[p : p + ENDING_TOKENS]
    if any(sp.is_byte(i) or sp.is_control(i) for i in ending_ids) or len(set(ending_ids)) < 4:
        return None
    context = tokenizer.decode(ids[p - CONTEXT_TOKENS : p])
    if "\ufffd" in context or not context.strip():
        return None
    right = tokenizer.decode(ending_ids)
    endings = {right}
    while len(endings) < NUM_ENDINGS:
        shuffled = list(ending_ids)
        rng.shuffle(shuffled)
        endings.add(tokenizer.decode(shuffled))
    ordered = sorted(endings)
    rng.shuffle(ordered)
    return Example(context, tuple(ordered), ordered.index(right))


def make_task(corpus: list[Path], tokenizer: Tokenizer, out: Path, n: int, seed: int = 0) -> Path:
    """Write `n` examples drawn from the corpus files to `out` (the common jsonl form)."""
    rng = random.Random(seed)
    docs = [tokenizer.encode(p.read_text()) for p in corpus]
    docs = [d for d in docs if len(d) > 4 * CONTEXT_TOKENS]
    examples: list[Example] = []
    while len(examples) < n:
        ex = _candidate(tokenizer, rng.choice(docs), rng)
        if ex is None or ex.context in {e.context for e in examples}:
            continue
        task = Task("probe", out, (ex,))
        scored = {r.num_scored for r in build_requests(task, tokenizer, max_len=1024)}
        if scored == {ENDING_TOKENS}:  # every ending is 6 tokens after this context
            examples.append(ex)
    lines = [
        json.dumps({"context": e.context, "endings": list(e.endings), "label": e.label})
        for e in examples
    ]
    out.write_text("\n".join(lines) + "\n")
    return out
