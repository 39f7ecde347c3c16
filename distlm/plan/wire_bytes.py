"""Count the bytes this process hands to collectives, as the backend itself records them.

    with WireBytes() as wire:
        train_step()
    wire.bytes_by("dtype")     # {"float": 4.1e6, "c10::BFloat16": ...}

torch's profiler records every process-group collective (`gloo:all_reduce`, `nccl:all_reduce`,
`gloo:reduce_scatter`, ...) with the shapes and dtypes of its input tensors, from C++: DDP's
reducer, FSDP2's reduce-scatter and DeepSpeed's calls are seen alike, none of them patched. The
figure is the size of each collective's input (the whole gradient bucket for an all-reduce or a
reduce-scatter, the local shard for an all-gather); a ring sends 2(W-1)/W or (W-1)/W of it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from torch.profiler import ProfilerActivity, profile

# the profiler's dtype names -> bytes per element
DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::BFloat16": 2,
    "c10::Half": 2,
    "long int": 8,
    "int": 4,
    "unsigned char": 1,
    "signed char": 1,
    "bool": 1,
}
BACKENDS = ("gloo:", "nccl:")


@dataclass(frozen=True)
class Collective:
    name: str  # e.g. "all_reduce", without the backend prefix
    dtype: str  # the profiler's name of the input dtype
    bytes: int  # input tensor bytes


@dataclass
class WireBytes:
    """Context manager collecting `Collective` records of the code run inside it."""

    calls: list[Collective] = field(default_factory=list)

    def __enter__(self) -> WireBytes:
        self._prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._prof.__exit__(*exc)
        for ev in self._prof.events():
            if ev.name.startswith(BACKENDS):
                self.calls.append(_collective(ev))

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.calls)

    def bytes_by(self, key: str) -> dict[str, int]:
        """Bytes summed per `name` or per `dtype`."""
        out: Counter = Counter()
        for c in self.calls:
            out[getattr(c, key)] += c.bytes
        return dict(out)


def _collective(ev) -> Collective:
    shapes = ev.input_shapes or []
    dtypes = ev.input_dtypes or []
    size, dtype = 0, ""
    for shape, dt in zip(shapes, dtypes, strict=False):
        if dt in DTYPE_BYTES and shape:
            size += math.prod(shape) * DTYPE_BYTES[dt]
            dtype = dtype or dt
    return Collective(ev.name.split(":", 1)[1], dtype, size)
