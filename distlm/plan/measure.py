"""`distlm plan --measure`: real forward + backward + AdamW steps on this device, beside the plan.

Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU there is no allocator statistic,
so `LiveTensorBytes` counts the bytes of every live tensor storage (a dispatch mode sees each
storage an op creates, a weakref callback sees it freed). That is exact tensor accounting, free of
the malloc arenas and library pages that make RSS a poor yardstick. Timing runs without the mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from distlm.config import Config
from distlm.model.llama import build_model
from distlm.plan.memory_model import MemoryBreakdown, estimate
from distlm.plan.planner import HostRates, Plan, is_bf16, layout_for, local_batch

WARMUP_STEPS = 2  # step 1 allocates AdamW states; step 2 is the first steady-state step


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages created under the mode (plus any `track`ed), and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, tuple[int, weakref.ref]] = {}

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in self._live and self._live[key][1]() is st:
            return  # a view of a storage already counted
        ref = weakref.ref(st, lambda r, k=key, n=st.nbytes(): self._freed(k, r, n))
        self._live[key] = (st.nbytes(), ref)
        self.current += st.nbytes()
        self.peak = max(self.peak, self.current)

    def _freed(self, key: int, ref: weakref.ref, nbytes: int) -> None:
        self.current -= nbytes
        if key in self._live and self._live[key][1] is ref:
            del self._live[key]

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.track(t)
        return out


@dataclass
class Measurement:
    device: str
    micro_batch_size: int
    seq_len: int
    tokens_per_s: float  # steady state, warm-up excluded
    step_time_s: float
    peak_bytes: int  # steady-state peak of tensor bytes (CUDA: max_memory_allocated)
    state_bytes: tuple[int, int, int]  # params, grads, AdamW states from the real tensors
    predicted: MemoryBreakdown


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch, autocast) -> None:
    inputs, targets = batch
    with autocast():
        loss = model(inputs, targets)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: a DTensor's local shard; a tensor subclass (torchao's 8-bit
    optimizer state) by its inner tensors (codes, scales, code table), not its logical dtype."""
    if isinstance(t, DTensor):
        t = t.to_local()
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def _state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, int, int]:
    size = tensor_bytes
    grads = sum(size(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(size(v) for s in opt.state.values() for k, v in s.items() if k != "step")
    return sum(size(p) for p in model.parameters()), grads, states


def _setup(cfg: Config, device: torch.device):
    from distlm.parallel import apply_activation_checkpointing
    from distlm.parallel.base import build_adamw

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device)
    if cfg.parallel.activation_checkpointing:
        apply_activation_checkpointing(model)
    opt = build_adamw(model, cfg, device)
    bf16 = is_bf16(cfg)
    autocast = (
        (lambda: torch.autocast(device.type, torch.bfloat16)) if bf16 else (contextlib.nullcontext)
    )
    return model, opt, autocast


def measure(cfg: Config, steps: int = 6) -> Measurement:
    """Run `steps` single-rank steps of one micro-batch; time and peak exclude the warm-up."""
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    )
    micro = cfg.train.micro_batch_size or local_batch(cfg)
    t = cfg.train.seq_len
    gen = torch.Generator().manual_seed(0)
    batch = tuple(
        torch.randint(0, cfg.model.vocab_size, (micro, t), generator=gen).to(device)
        for _ in range(2)
    )
    model, opt, autocast = _setup(cfg, device)
    for _ in range(WARMUP_STEPS):
        _step(model, opt, batch, autocast)
    timed = max(1, steps - WARMUP_STEPS)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(timed):
        _step(model, opt, batch, autocast)
    sync()
    step_s = (time.perf_counter() - start) / timed
    peak = _peak_bytes(model, opt, batch, autocast, device)
    _step(model, opt, batch, autocast)
    model.zero_grad(set_to_none=False)  # materialise grads to count them (zeros, same layout)
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    lay = layout_for(cfg, "ddp", cfg.parallel.activation_checkpointing, micro)
    # one plain rank: the configured optimizer and loss chunking, no sharding, no offload
    lay = dataclasses.replace(lay, world_size=1, device=device.type, offload="none")
    return Measurement(
        device.type,
        micro,
        t,
        micro * t / step_s,
        step_s,
        peak,
        _state_bytes(model, opt),
        estimate(cfg.model, lay),
    )


def _peak_bytes(model, opt, batch, autocast, device: torch.device) -> int:
    """Peak bytes over one more steady-state step."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        _step(model, opt, batch, autocast)
        return torch.cuda.max_memory_allocated(device)
    tracker = LiveTensorBytes()
    for t in [
        *model.parameters(),
        *model.buffers(),
        *batch,
        *(v for s in opt.state.values() for v in s.values()),
    ]:
        tracker.track(t)
    tracker.reset_peak()
    with tracker:
        _step(model, opt, batch, autocast)
    return tracker.peak


def format_measurement(cfg: Config, p: Plan, m: Measurement) -> str:
    pred = m.predicted
    gb = 1e9
    peak_pred = pred.peak - pred.workspace  # the context is not in allocated bytes
    static = sum(m.state_bytes)
    rows = [
        ("params + grads + AdamW GB", f"{pred.static / gb:.4f}", f"{static / gb:.4f}"),
        ("peak GB (steady state)", f"{peak_pred / gb:.3f}", f"{m.peak_bytes / gb:.3f}"),
        ("tokens/s", "-", f"{m.tokens_per_s:,.0f}"),
        ("step time s", "-", f"{m.step_time_s:.3f}"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [
        f"measured on {m.device}: 1 rank, micro-batch {m.micro_batch_size} x seq "
        f"{m.seq_len}, {'bf16 autocast' if is_bf16(cfg) else 'fp32'}, warm-up excluded",
        f"{'':<{w}}  {'predicted':>10}  {'measured':>10}",
    ]
    lines += [f"{a:<{w}}  {b:>10}  {c:>10}" for a, b, c in rows]
    err = (m.peak_bytes - peak_pred) / peak_pred if peak_pred else 0.0
    lines.append(f"peak: measured is {err:+.1%} off the model")
    return "\n".join(lines)


def measure_host_rates(numel: int = 10_000_000, repeats: int = 3) -> HostRates:
    """Seconds per parameter of an optimizer step on this host's CPU, as offload runs it:
    DeepSpeed's CPU Adam (ZeRO-Offload; its op JIT-builds on first use, 2-3 min cold) and
    torch's AdamW on CPU tensors (FSDP2 CPUOffloadPolicy). Best of `repeats` warm steps."""

    def rate(make_opt) -> float:
        p = nn.Parameter(torch.zeros(numel))
        p.grad = torch.full_like(p, 1e-3)
        opt = make_opt([p])
        opt.step()  # allocates the states
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            opt.step()
            best = min(best, time.perf_counter() - start)
        return best / numel

    torch_rate = rate(lambda ps: torch.optim.AdamW(ps, lr=1e-3))
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        ds_rate = rate(lambda ps: DeepSpeedCPUAdam(ps, lr=1e-3))
    except Exception as e:  # no compiler / headers for the JIT build: keep the default figure
        print(f"DeepSpeedCPUAdam unavailable here ({type(e).__name__}); using the default rate")
        ds_rate = HostRates().cpu_adam_s_per_param
    return HostRates(ds_rate, torch_rate, "measured on this host")


def format_host_rates(r: HostRates) -> str:
    return (
        f"host optimizer step ({r.source}): DeepSpeedCPUAdam {r.cpu_adam_s_per_param * 1e9:.2f} "
        f"ns/param (ZeRO-Offload), torch AdamW on CPU {r.torch_adamw_s_per_param * 1e9:.2f} "
        f"ns/param (FSDP2 offload)"
    )
