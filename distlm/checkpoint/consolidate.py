"""`python -m distlm consolidate <checkpoint_dir> <out.safetensors>`: one file of full weights.

Works on a checkpoint of any strategy, in one process, with no process group and no GPU:
- ddp / fsdp2 write torch.distributed.checkpoint (DCP) shards: only the `model.*` entries are
  read back, each assembled from every rank's shards;
- zero1/2/3 write DeepSpeed checkpoints: DeepSpeed's `zero_to_fp32` merges the fp32 master
  weights of every rank's optimizer partition (the exact weights training continues from).
The argument may also be a run dir or its `checkpoints/` dir: the `latest` checkpoint is used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from distlm.checkpoint.manager import STATE_DIR, TRAINER_STATE, CheckpointError
from distlm.parallel.base import clean_fqn

DCP_STRATEGIES = ("ddp", "fsdp2")
ZERO_STRATEGIES = ("zero1", "zero2", "zero3")
ZERO_TAG = "zero"  # distlm.parallel.zero.TAG (not imported: that module needs DeepSpeed)


def find_checkpoint(path: Path) -> Path:
    """`path` itself if it is a checkpoint, else the one its `latest` pointer names."""
    for root in (path, path / "checkpoints"):
        if (root / TRAINER_STATE).exists():
            return root
        if (root / "latest").exists():
            return find_checkpoint(root / (root / "latest").read_text().strip())
    raise CheckpointError(
        f"{path}: not a checkpoint (no {TRAINER_STATE}) and no `latest` pointer under it; "
        f"pass a directory such as runs/demo/checkpoints/step-00000100"
    )


def _load_dcp_model(state_dir: Path) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(state_dir))
    meta = reader.read_metadata().state_dict_metadata
    # DCP flattens {"model": {...}, "optim": {...}} to dotted keys; load only the weights
    model = {
        key.removeprefix("model."): torch.empty(m.size, dtype=m.properties.dtype)
        for key, m in meta.items()
        if key.startswith("model.") and hasattr(m, "size")
    }
    if not model:
        raise CheckpointError(f"{state_dir}: DCP checkpoint holds no `model.*` tensors")
    state = {"model": model}
    dcp.load(state, storage_reader=reader, no_dist=True)
    return state["model"]


def _load_zero_model(state_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not (state_dir / ZERO_TAG).is_dir():
        raise CheckpointError(f"{state_dir}: no DeepSpeed checkpoint tag dir '{ZERO_TAG}/'")
    return get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=ZERO_TAG)


def load_full_state_dict(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Full fp32 model weights of a checkpoint dir and its trainer state."""
    checkpoint = find_checkpoint(checkpoint)
    try:
        trainer_state = json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{checkpoint / TRAINER_STATE}: unreadable ({e})") from e
    strategy = trainer_state.get("strategy")
    state_dir = checkpoint / STATE_DIR
    if strategy in DCP_STRATEGIES:
        weights = _load_dcp_model(state_dir)
    elif strategy in ZERO_STRATEGIES:
        weights = _load_zero_model(state_dir)
    else:
        raise CheckpointError(
            f"{checkpoint / TRAINER_STATE}: unknown strategy {strategy!r}; expected one of "
            f"{list(DCP_STRATEGIES + ZERO_STRATEGIES)}"
        )
    # safetensors refuses shared or strided storage: one contiguous fp32 copy per tensor
    full = {
        clean_fqn(k): v.detach().to(torch.float32).contiguous().clone() for k, v in weights.items()
    }
    return full, {**trainer_state, "checkpoint": str(checkpoint)}


def consolidate(checkpoint: Path, out: Path) -> int:
    """Write the full weights of `checkpoint` to `out`; returns the parameter count."""
    from safetensors.torch import save_file

    weights, state = load_full_state_dict(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    meta = {
        "step": str(state["step"]),
        "strategy": state["strategy"],
        "checkpoint": state["checkpoint"],
        "format": "distlm full fp32 state dict",
    }
    save_file(weights, str(tmp), metadata=meta)
    tmp.replace(out)
    return sum(t.numel() for t in weights.values())


def main(argv: list[str]) -> int:
    args = argv[1:] if argv and argv[0] == "consolidate" else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print(
            "usage: python -m distlm consolidate <checkpoint_dir> <out.safetensors>",
            file=sys.stderr,
        )
        return 2
    try:
        n = consolidate(Path(args[0]), Path(args[1]))
    except CheckpointError as e:
        print(f"consolidate: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args[1]}: {n:,} parameters (fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
