"""Judging a model: bits per byte and per-dataset validation, multiple-choice downstream tasks.

validation.py       val loss, perplexity, bits per byte; each dataset of a mixture alone
bpb.py              bytes of source text per token id (from the sentencepiece vocab)
tasks.py            the task .jsonl format, read and checked line by line (EvalError)
multiple_choice.py  log-likelihood scoring, batched and spread over ranks; acc, acc_norm
in_loop.py          what the trainer calls every train.eval_every_steps / eval.every_steps
cli.py              `python -m distlm eval RUN_OR_CHECKPOINT --task FILE.jsonl`
"""
