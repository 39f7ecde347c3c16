"""`parallel.grad_comm_dtype`: the dtype gradients travel in, one key for every strategy.

bf16 halves the bytes of the gradient all-reduce (DDP, ZeRO-1) or reduce-scatter (FSDP2, ZeRO-2/3),
which is what limits scaling where all-reduce bandwidth is scarce (8 GeForce cards on PCIe with
P2P off: ~10-20 GB/s bus bandwidth). Gradients are still accumulated over micro-batches, clipped
and applied in fp32 (the master weights and AdamW states are fp32); only the copy on the wire,
and the sum the collective forms from it, is bf16 (8 mantissa bits: a relative rounding error of
~2^-9 per gradient element, averaged over W ranks).

- DDP: a comm hook (torch's `bf16_compress_hook`, renamed) casts each bucket to bf16,
  pre-divides by W, all-reduces and copies the result back into the fp32 bucket;
- FSDP2: `MixedPrecisionPolicy(reduce_dtype=bf16)`: the reduce-scatter runs in bf16 and the
  reduced shard is cast back to the fp32 sharded gradient;
- DeepSpeed ZeRO: `communication_data_type` (DeepSpeed's own default is bf16 whenever its bf16
  section is on, so fp32 is stated explicitly too).

gloo (CPU) all-reduces, reduce-scatters and all-gathers bf16 tensors (tests/test_grad_comm.py runs
all three strategies on it); NCCL does since 2.10.
"""

# no `from __future__ import annotations`: DDP compares the hook's annotations as objects
import torch
import torch.distributed as dist
from torch import nn

from distlm.config import Config

COMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grad_comm_dtype(cfg: Config) -> torch.dtype:
    """parallel.grad_comm_dtype as a torch dtype."""
    return COMM_DTYPES[cfg.parallel.grad_comm_dtype]


def bf16_allreduce_hook(
    process_group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: all-reduce the bucket in bf16, the result copied back into the fp32 bucket.

    What torch's `bf16_compress_hook` does, under another name: DDP refuses to register the
    function of that name unless NCCL >= 2.10 is present (`_check_comm_hook` in
    torch/nn/parallel/distributed.py), although gloo all-reduces bf16 tensors too.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()  # fp32, flat: this bucket's gradients
    compressed = buffer.to(torch.bfloat16).div_(group.size())  # pre-divide: the sum is a mean

    def decompress(fut: torch.futures.Future) -> torch.Tensor:
        buffer.copy_(fut.value()[0])
        return buffer

    return dist.all_reduce(compressed, group=group, async_op=True).get_future().then(decompress)


def apply_ddp_grad_comm(ddp_model: nn.Module, cfg: Config) -> None:
    """Register the bf16 hook on a DDP module (fp32: DDP's built-in all-reduce, no hook)."""
    if grad_comm_dtype(cfg) == torch.bfloat16:
        ddp_model.register_comm_hook(None, bf16_allreduce_hook)  # None: the default group


def fsdp_mp_policy(cfg: Config, compute_dtype: torch.dtype):
    """FSDP2's MixedPrecisionPolicy: params in the compute dtype, gradients reduced in the comm
    dtype; None when both are fp32 (FSDP2's default)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    reduce = grad_comm_dtype(cfg)
    if compute_dtype == torch.float32 and reduce == torch.float32:
        return None
    param = compute_dtype if compute_dtype != torch.float32 else None
    return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=reduce)
