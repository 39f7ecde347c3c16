"""torchrun entry point: `torchrun --nproc_per_node=N launch/train.py [presets] [key=value ...]`.

Thin on purpose (all logic lives in `distlm.train`): the same arguments as `python -m distlm
train`. torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR; a non-zero exit of any rank
makes torchrun stop the others.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from distlm.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
