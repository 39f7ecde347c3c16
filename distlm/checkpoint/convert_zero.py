"""ZeRO checkpoints at another world size or under another strategy, through DeepSpeed's
universal checkpoint format.

A ZeRO checkpoint (`state/zero/`) holds each rank's flat slice of the fp32 master weights and
Adam moments, so it loads only at the world size that wrote it. DeepSpeed's universal format
holds them per parameter, full size:

    step-N/universal/                  made once, next to state/, when first needed (cached)
        latest_universal               "zero": the tag, as DeepSpeed's loader reads it
        zero/mp_rank_00_model_states.pt    (ZeRO-3: zero_pp_rank_*_mp_rank_00_model_states.pt)
        zero/zero/optimizer_state.pt   param groups, clip and loss-scale state
        zero/zero/<param name>/{fp32,exp_avg,exp_avg_sq,step}.pt   (ZeRO-3: one step, above)

- ZeRO -> ZeRO at another world size: `python -m deepspeed.checkpoint.ds_to_universal` (run as a
  subprocess, exactly the command the README gives), then DeepSpeed's `load_universal`;
- ZeRO -> ddp / fsdp2: the universal files mapped to a DCP checkpoint in `step-N/dcp/`, in the
  form `get_state_dict` gives (FQN keys; AdamW `step` / `exp_avg` / `exp_avg_sq`);
- ddp / fsdp2 -> ZeRO: the DCP checkpoint read whole and written in the universal layout, with
  the ZeRO run's own parameter names, into `step-N/universal-<hash of the names>/`.
Each output is built on rank 0 under `<name>.tmp-<host>-<pid>` and renamed when complete; every
rank gets rank 0's error, if any. What cannot map (another optimizer's state, other param
groups, per-parameter step counters that differ) is refused with a CheckpointError that says why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from distlm.checkpoint.manager import CheckpointError, _fsync_tree

TAG = "zero"  # distlm.parallel.zero.TAG: the tag directory DeepSpeed writes and reads
LATEST_UNIVERSAL = "latest_universal"  # DeepSpeed's pointer to a universal checkpoint's tag
ADAM_KEYS = ("exp_avg", "exp_avg_sq")
OPTIMIZER_STATE_DICT = "optimizer_state_dict"  # deepspeed.checkpoint.constants (lazy import)
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def saved_world_size(state_dir: Path) -> int:
    """Ranks that wrote a ZeRO checkpoint (one `*_optim_states.pt` each)."""
    return len(list((state_dir / TAG).glob("*_optim_states.pt")))


def is_dcp(state_dir: Path) -> bool:
    return (state_dir / ".metadata").exists()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def log_rank0(message: str) -> None:
    """Print on rank 0 only (the trainer's log goes to stdout the same way)."""
    if _rank() == 0:
        print(message, flush=True)


def build_once(out: Path, build: Callable[[Path], None]) -> Path:
    """`build(tmp)` on rank 0 unless `out` exists, then tmp -> out; every rank gets its error.

    tmp is `<out>.tmp-<host>-<pid>`: two runs resuming from one checkpoint at once each build
    their own and the second rename loses harmlessly; a killed build's tmp is removed by the
    next build on that host."""
    error = None
    if _rank() == 0 and not out.exists():
        host = socket.gethostname()
        _remove_dead_builds(out, host)
        tmp = out.with_name(f"{out.name}.tmp-{host}-{os.getpid()}")
        try:
            tmp.mkdir()
            build(tmp)
            _fsync_tree(tmp)
            os.replace(tmp, out)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, not hang
            shutil.rmtree(tmp, ignore_errors=True)
            if not out.exists():  # else another run finished the same conversion first
                error = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
                error = f"{out}: conversion failed: {error}"
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise CheckpointError(error)
    return out


def _remove_dead_builds(out: Path, host: str) -> None:
    """Delete `<out>.tmp-<host>-<pid>` dirs of builds on this host whose process is gone."""
    for tmp in out.parent.glob(f"{out.name}.tmp-{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


# ---- ZeRO -> universal (DeepSpeed's own converter) ----------------------------------------------
def ds_to_universal_command(tag_dir: Path, output_folder: Path) -> list[str]:
    workers = str(max(1, min(4, os.cpu_count() or 1)))
    return [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(tag_dir),
        "--output_folder",
        str(output_folder),
        "--inject_missing_state",  # our checkpoints carry no universal_checkpoint_info
        "--num_extract_workers",
        workers,
        "--num_merge_workers",
        workers,
    ]


def zero_to_universal(state_dir: Path) -> Path:
    """`step-N/universal/` made from `step-N/state/zero/` (once; later calls reuse it)."""
    out = state_dir.parent / "universal"
    if importlib.util.find_spec("deepspeed") is None:
        raise CheckpointError(
            f"{state_dir} is a DeepSpeed ZeRO checkpoint: converting it needs DeepSpeed "
            f"(pip install 'distlm[deepspeed]')"
        )

    def build(tmp: Path) -> None:
        # ds_to_universal writes `latest_universal` into the output folder's parent: tmp
        cmd = ds_to_universal_command(state_dir / TAG, tmp / TAG)
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise CheckpointError(
                f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout[-3000:]}"
            )
        log_rank0(
            f"converted {state_dir / TAG} to DeepSpeed's universal checkpoint {out} in "
            f"{time.perf_counter() - start:.1f} s (`{' '.join(cmd[1:])}`)"
        )

    if out.exists():
        log_rank0(f"using the universal checkpoint {out} converted earlier")
    return build_once(out, build)


# ---- universal -> DCP (ddp / fsdp2) -----------------------------------------------------------
def _load_file(path: Path):
    try:
        # DeepSpeed's own files (optimizer_state.pt pickles its LossScaler): DeepSpeed's loader
        # reads them the same way
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing from the universal checkpoint") from e


def _universal_tensor(path: Path, shape: torch.Size) -> torch.Tensor:
    """One full tensor of a universal checkpoint: ZeRO-1/2 save {"param": tensor, ...}, ZeRO-3
    the flat tensor itself."""
    obj = _load_file(path)
    return (obj["param"] if isinstance(obj, dict) else obj).reshape(shape)


def _universal_param_groups(
    universal: Path, optimizer_state: dict
) -> list[tuple[dict, dict[str, str]]]:
    """[(hyperparameters, {name as saved: (clean FQN, shape)})] per param group of a universal
    checkpoint."""
    from distlm.parallel.base import clean_fqn

    tag = universal / TAG
    states = next((tag / f for f in MODEL_STATES if (tag / f).exists()), None)
    if states is None:
        raise CheckpointError(f"{tag}: no {' or '.join(MODEL_STATES)}")
    shapes = _load_file(states)["param_shapes"]  # one {name: shape} per group (ZeRO-3: sub-group)
    groups = optimizer_state["param_groups"]
    if len(shapes) != len(groups):
        raise CheckpointError(
            f"{states}: {len(shapes)} parameter (sub-)groups for {len(groups)} optimizer param "
            f"groups; only one group per param group maps to a DCP optimizer state (ZeRO-3 "
            f"`sub_group_size` split them)"
        )
    return [
        (
            {k: v for k, v in hyper.items() if k != "params"},
            {n: (clean_fqn(n), s) for n, s in g.items()},
        )
        for hyper, g in zip(groups, shapes, strict=True)
    ]


def universal_to_dcp(universal: Path, out: Path) -> Path:
    """A DCP checkpoint `{"model", "optim"}` with the universal checkpoint's weights and AdamW
    state, keyed as `get_state_dict` keys them (what ddp / fsdp2 load)."""
    import torch.distributed.checkpoint as dcp

    def build(tmp: Path) -> None:
        model, state, param_groups = {}, {}, []
        optimizer_state = _load_file(universal / TAG / "zero" / "optimizer_state.pt")
        # ZeRO-1/2 write a step.pt per parameter; ZeRO-3 keeps one step, here
        step = optimizer_state.get(OPTIMIZER_STATE_DICT, {}).get("state", {}).get(0, {}).get("step")
        for hyper, names in _universal_param_groups(universal, optimizer_state):
            param_groups.append({**hyper, "params": [name for name, _ in names.values()]})
            for saved, (name, shape) in names.items():  # files under the saved names; keys clean
                folder = universal / TAG / "zero" / saved
                model[name] = _universal_tensor(folder / "fp32.pt", shape)
                if (folder / "step.pt").exists() or step is None:
                    step = _load_file(folder / "step.pt")
                state[name] = {"step": torch.as_tensor(step).float().reshape(()).clone()}
                for key in ADAM_KEYS:
                    state[name][key] = _universal_tensor(folder / f"{key}.pt", shape)
        sd = {"model": model, "optim": {"state": state, "param_groups": param_groups}}
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=True)
        log_rank0(f"mapped the universal checkpoint {universal} to a DCP checkpoint {out}")

    return build_once(out, build)


def zero_to_dcp(state_dir: Path) -> Path:
    """`step-N/dcp/` (a ddp / fsdp2 state dir) from a ZeRO checkpoint's `step-N/state/`."""
    return universal_to_dcp(zero_to_universal(state_dir), state_dir.parent / "dcp")


# ---- DCP (ddp / fsdp2) -> universal -----------------------------------------------------------
def _read_dcp(state_dir: Path) -> dict:
    """Every entry of a DCP checkpoint, full size, under its flat key (`optim.state.<fqn>.step`)."""
    import torch.distributed.checkpoint as dcp

    from distlm.checkpoint.safe_load import SafeFileSystemReader, WeightsOnlyLoadPlanner

    reader = SafeFileSystemReader(str(state_dir))
    meta = reader.read_metadata().state_dict_metadata
    flat = {
        k: torch.empty(m.size, dtype=m.properties.dtype) if hasattr(m, "size") else None
        for k, m in meta.items()
    }
    dcp.load(flat, storage_reader=reader, planner=WeightsOnlyLoadPlanner(), no_dist=True)
    return flat


def _dcp_adamw_state(state_dir: Path, names: dict[str, str]) -> tuple[dict, list, float]:
    """({fqn: {fp32, exp_avg, exp_avg_sq}}, [(hyperparameters, [fqn])] per group, Adam step)."""
    flat = _read_dcp(state_dir)
    model = {k.removeprefix("model."): v for k, v in flat.items() if k.startswith("model.")}
    if set(model) != set(names):
        missing, unexpected = sorted(set(names) - set(model)), sorted(set(model) - set(names))
        raise CheckpointError(
            f"{state_dir}: parameters differ from this model's: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    params, steps = {}, set()
    for name, weight in model.items():
        prefix = f"optim.state.{name}."
        keys = {k.removeprefix(prefix) for k in flat if k.startswith(prefix)}
        if keys != {"step", *ADAM_KEYS}:
            raise CheckpointError(
                f"{state_dir}: optimizer state of {name} holds {sorted(keys)}; only AdamW's "
                f"step, exp_avg and exp_avg_sq map to DeepSpeed's universal checkpoint"
            )
        params[name] = {"fp32": weight, **{k: flat[prefix + k] for k in ADAM_KEYS}}
        steps.add(float(flat[prefix + "step"]))
    if len(steps) != 1:
        raise CheckpointError(
            f"{state_dir}: AdamW step counters differ between parameters ({sorted(steps)}); "
            f"DeepSpeed keeps one per param group and cannot hold them"
        )
    groups = []
    while f"optim.param_groups.{len(groups)}.params" in flat:
        prefix = f"optim.param_groups.{len(groups)}."
        hyper = {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}
        groups.append((hyper, list(hyper.pop("params"))))
    return params, groups, steps.pop()


def dcp_to_universal(state_dir: Path, names: dict[str, str], num_groups: int) -> Path:
    """`<ckpt>/universal-<hash>/` from a DCP checkpoint, for a ZeRO run whose parameters are
    called `names[fqn]` and whose optimizer has `num_groups` param groups."""
    import deepspeed
    from deepspeed.checkpoint.constants import (
        PARAM_GROUPS,
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    digest = hashlib.sha256(repr(sorted(names.items())).encode()).hexdigest()[:8]
    out = state_dir.parent / f"universal-{digest}"

    def build(tmp: Path) -> None:
        params, groups, step = _dcp_adamw_state(state_dir, names)
        if len(groups) != num_groups:
            raise CheckpointError(
                f"{state_dir}: {len(groups)} optimizer param groups; this run's optimizer has "
                f"{num_groups}, and DeepSpeed loads them group by group"
            )
        folder = tmp / TAG
        for fqn, tensors in params.items():
            (folder / "zero" / names[fqn]).mkdir(parents=True)
            for key, t in tensors.items():
                torch.save({"param": t, "cat_dim": 0}, folder / "zero" / names[fqn] / f"{key}.pt")
            torch.save(torch.tensor(step), folder / "zero" / names[fqn] / "step.pt")
        param_groups = [{**h, "params": [i]} for i, (h, _) in enumerate(groups)]
        torch.save(
            {
                "ds_version": deepspeed.__version__,
                PARAM_GROUPS: param_groups,
                # ZeRO-3's loader takes the step from here
                OPTIMIZER_STATE_DICT: {
                    "state": {0: {"step": torch.tensor(step)}},
                    PARAM_GROUPS: param_groups,
                },
            },
            folder / "zero" / "optimizer_state.pt",
        )
        model_states = {
            "module": {names[n]: p["fp32"] for n, p in params.items()},
            "param_shapes": [{names[n]: params[n]["fp32"].shape for n in g} for _, g in groups],
            "buffer_names": [],
            "lr_scheduler": None,
            "global_steps": int(step),
            "skipped_steps": 0,
            "dp_world_size": 1,
            "mp_world_size": 1,
            "ds_version": deepspeed.__version__,
            UNIVERSAL_CHECKPOINT_INFO: {
                UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE
            },
        }
        for name in MODEL_STATES:  # ZeRO-1/2's name and ZeRO-3's: one layout serves all stages
            torch.save(model_states, folder / name)
        (tmp / LATEST_UNIVERSAL).write_text(TAG)
        log_rank0(f"mapped the DCP checkpoint {state_dir} to DeepSpeed's universal layout {out}")

    return build_once(out, build)
