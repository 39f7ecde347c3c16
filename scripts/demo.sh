#!/usr/bin/env bash
# The main job, from a fresh machine: set up .venv, build a real corpus from the Python standard
# library's sources, train a BPE tokenizer, pre-tokenize into Arrow shards, pretrain the tiny model
# for a few minutes (GPU if present, else CPU), print falling train/val loss and a sample.
#   bash scripts/demo.sh                    # defaults
#   bash scripts/demo.sh train.steps=500    # extra key=value overrides go to the trainer
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m data_tools.demo_data --out data/demo
rm -rf runs/demo  # the demo starts fresh each time; real runs resume (checkpoint.resume=auto)
exec .venv/bin/python -m distlm train recipe=demo model=tiny hardware=auto data.path=data/demo \
  logging.run_dir=runs/demo "$@"
