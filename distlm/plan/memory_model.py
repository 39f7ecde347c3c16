"""Analytic memory per rank for one (model, hardware, parallel, train) config.

Every term below is derived from `distlm/model/llama.py` as written and from the strategies in
`distlm/parallel/`; `tests/test_plan_memory.py` checks parameter, gradient and optimizer bytes
exactly against real tensors (AdamW after one step on CPU; FSDP2 shards under the fake process
group at W=8) and the peak against a measured CPU step within a stated tolerance.

Precision schemes (what the trainer does today):
- fp32: params, grads fp32; AdamW exp_avg + exp_avg_sq fp32 -> 4 + 4 + 8 = 16 bytes/param.
- bf16 with torch DDP / FSDP2: fp32 params (they are the master copy), fp32 grads, fp32 AdamW,
  compute under `torch.autocast(bf16)`. DDP keeps autocast's bf16 weight copies (2 bytes/param)
  alive from forward to backward; FSDP2 (`MixedPrecisionPolicy(param_dtype=bf16)`) instead holds
  the bf16 all-gathered params of the layers in flight.
- bf16 with DeepSpeed ZeRO: bf16 params and grads (2 + 2) + fp32 master, exp_avg, exp_avg_sq
  (4 + 4 + 4): the ZeRO paper's 2 + 2 + K with K = 12 (Rajbhandari et al. 2020, section 3).
Sharding over W ranks (ZeRO paper, figure 1): ddp shards nothing; zero1 shards optimizer states
(and the master copy); zero2 also gradients; zero3 / fsdp2 also parameters, plus the unsharded
params of the layers being computed (one layer; two while the next is prefetched).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from distlm.config import ModelConfig
from distlm.model.llama import ffn_hidden, padded_vocab

GIB = 1024**3
# CUDA context + cuBLAS/NCCL workspaces measured on typical H100 / RTX setups are 0.5-1.5 GB
# (PyTorch "Understanding CUDA memory usage" notes; NCCL buffers ~ 2 x 4 MiB x channels). We budget
# 1.0 GiB on a GPU and nothing on CPU (host RAM has no context to reserve).
CUDA_CONTEXT_BYTES = 1.0 * GIB


@dataclass(frozen=True)
class ParamShape:
    name: str
    shape: tuple[int, ...]
    in_block: bool  # inside a transformer block (sharded and gathered layer by layer)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def param_shapes(cfg: ModelConfig) -> list[ParamShape]:
    """Every parameter of `Transformer(cfg)` with its shape, in `named_parameters()` order."""
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    kv, f, v = cfg.n_kv_heads * hd, ffn_hidden(cfg), padded_vocab(cfg)
    out = [ParamShape("embed.weight", (v, d), False)]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        block = [
            ("attn_norm.weight", (d,)),
            ("attn.qkv.weight", (d + 2 * kv, d)),
            ("attn.out.weight", (d, d)),
        ]
        if cfg.qk_norm:
            block += [("attn.q_norm.weight", (hd,)), ("attn.k_norm.weight", (hd,))]
        block += [
            ("ffn_norm.weight", (d,)),
            ("ffn.gate_up.weight", (2 * f, d)),
            ("ffn.down.weight", (d, f)),
        ]
        out += [ParamShape(p + n, s, True) for n, s in block]
    out.append(ParamShape("norm.weight", (d,), False))
    if not cfg.tie_embeddings:
        out.append(ParamShape("head.weight", (v, d), False))
    return out


def fsdp2_local_rows(dim0: int, world: int, rank: int) -> int:
    """Rows of a dim-0 `Shard(0)` FSDP2 shard on `rank`: torch.chunk semantics (ceil chunks)."""
    chunk = -(-dim0 // world)
    return max(0, min(chunk, dim0 - rank * chunk))


def fsdp2_local_numel(shapes: list[ParamShape], world: int, rank: int) -> int:
    """Elements this rank's `to_local()` shards hold (unpadded), summed over parameters."""
    total = 0
    for p in shapes:
        rest = p.numel // p.shape[0]
        total += fsdp2_local_rows(p.shape[0], world, rank) * rest
    return total


def fsdp2_padded_numel(shapes: list[ParamShape], world: int) -> int:
    """Elements FSDP2 allocates per rank: every shard is padded to ceil(dim0 / W) rows."""
    return sum(-(-p.shape[0] // world) * (p.numel // p.shape[0]) for p in shapes)


@dataclass(frozen=True)
class Layout:
    """What one rank runs: the inputs of the memory model."""

    strategy: str  # ddp | fsdp2 | zero1 | zero2 | zero3
    world_size: int
    micro_batch_size: int
    seq_len: int
    bf16: bool  # mixed precision (autocast / DeepSpeed bf16) instead of pure fp32
    activation_checkpointing: bool
    device: str = "cuda"  # cuda | cpu: decides the RMSNorm saved tensors and the context term
    prefetch_layers: int = 2  # FSDP2 / ZeRO-3 gathered layers in flight (current + prefetched)
    optimizer: str = "adamw"  # adamw | adamw8bit (torchao: uint8 moments + fp32 block scales)
    offload: str = "none"  # none | optimizer | all: what lives in host RAM (parallel.offload)
    loss_chunk_tokens: int = 0  # chunked head + loss (model.loss_chunk_tokens); 0 = plain


@dataclass
class MemoryBreakdown:
    """Bytes per rank, by what owns them; `peak` is the steady-state high-water mark."""

    params: int
    grads: int
    optimizer: int  # AdamW exp_avg + exp_avg_sq, plus the fp32 master copy when params are bf16
    gathered: int  # unsharded params (and their grads) of the layers in flight (zero3 / fsdp2)
    cast_weights: int  # autocast's bf16 weight copies (DDP / ZeRO-1/2 under autocast)
    activations: int  # saved for backward, all layers (checkpointed: block inputs only)
    recompute: int  # checkpointing: one block's activations, rebuilt in backward (else 0)
    logits: int  # logits, fp32 log-probs saved by the loss and their grad (chunked: one chunk
    # plus the head's gradients, computed in forward)
    workspace: int  # CUDA context + libraries (0 on CPU)
    host: int = 0  # host RAM of this rank's offloaded params, grads and optimizer states

    @property
    def static(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def peak(self) -> int:
        # the loss buffers are freed before backward reaches the first recomputed block
        transient = max(self.logits, self.recompute)
        return (
            self.static
            + self.gathered
            + self.cast_weights
            + self.activations
            + transient
            + self.workspace
        )

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "static": self.static, "peak": self.peak}


def state_bytes_per_param(strategy: str, bf16: bool) -> tuple[int, int, int]:
    """(param, grad, optimizer incl. master) bytes per parameter before sharding."""
    if bf16 and strategy.startswith("zero"):
        return 2, 2, 12  # bf16 params + grads; fp32 master + exp_avg + exp_avg_sq
    return 4, 4, 8  # fp32 params are the master copy (autocast computes in bf16)


def _sharded(strategy: str) -> tuple[bool, bool, bool]:
    """Which of (params, grads, optimizer) are divided by W."""
    return {
        "ddp": (False, False, False),
        "zero1": (False, False, True),
        "zero2": (False, True, True),
        "zero3": (True, True, True),
        "fsdp2": (True, True, True),
    }[strategy]


# torchao AdamW8bit (torchao/optim/adam.py `_new_buffer`, subclass_8bit.py): a tensor of >= 4,096
# values that divide into 256-value blocks gets uint8 codes (1 byte/value), one fp32 scale per
# block and a 256-entry fp32 code table, per moment; any other tensor keeps fp32 moments.
INT8_MIN_NUMEL, INT8_BLOCK, INT8_QMAP_BYTES = 4096, 256, 256 * 4


def adamw8bit_state_bytes(numel: int) -> int:
    """Bytes of exp_avg + exp_avg_sq for one (local) tensor of `numel` values."""
    if numel >= INT8_MIN_NUMEL and numel % INT8_BLOCK == 0:
        return 2 * (numel + numel // INT8_BLOCK * 4 + INT8_QMAP_BYTES)
    return 8 * numel


def local_numels(cfg: ModelConfig, lay: Layout, rank: int) -> list[int]:
    """Elements of each parameter this rank's optimizer steps (FSDP2: its dim-0 chunk)."""
    shapes = param_shapes(cfg)
    if lay.strategy != "fsdp2":
        return [p.numel for p in shapes]
    w = lay.world_size
    return [fsdp2_local_rows(p.shape[0], w, rank) * (p.numel // p.shape[0]) for p in shapes]


# ZeRO-Offload keeps in host RAM, per parameter of the partition: the fp32 master copy, both fp32
# Adam moments and an fp32 gradient buffer the CPU Adam reads (DeepSpeed stage_1_and_2.py with
# cpu_offload; stage3.py with offload_optimizer), in fp32 and bf16 runs alike.
ZERO_OFFLOAD_HOST_BYTES = 4 + 8 + 4


def state_bytes(cfg: ModelConfig, lay: Layout, rank: int = 0) -> tuple[int, int, int]:
    """Exact (params, grads, optimizer) bytes on `rank`'s accelerator, as the real tensors hold
    them; offloaded states count 0 here and in `host_bytes` instead."""
    params, grads, opt = _resident_state_bytes(cfg, lay, rank)
    if lay.offload == "none":
        return params, grads, opt
    if lay.strategy == "fsdp2":  # CPUOffloadPolicy: sharded params, grads and AdamW on the host
        return 0, 0, 0
    return (0 if lay.offload == "all" else params), grads, 0


def host_bytes(cfg: ModelConfig, lay: Layout, rank: int = 0) -> int:
    """Host RAM one rank's offloaded state takes (0 without offload)."""
    if lay.offload == "none":
        return 0
    if lay.strategy == "fsdp2":
        return sum(_resident_state_bytes(cfg, lay, rank))
    part = -(-sum(p.numel for p in param_shapes(cfg)) // lay.world_size)
    params = 0
    if lay.offload == "all":  # ZeRO-3 offload_param: the compute-dtype partition in host RAM
        params = part * state_bytes_per_param(lay.strategy, lay.bf16)[0]
    return part * ZERO_OFFLOAD_HOST_BYTES + params


def _resident_state_bytes(cfg: ModelConfig, lay: Layout, rank: int) -> tuple[int, int, int]:
    shapes = param_shapes(cfg)
    n = sum(p.numel for p in shapes)
    w = lay.world_size
    pb, gb, ob = state_bytes_per_param(lay.strategy, lay.bf16)
    if lay.optimizer == "adamw8bit":  # ddp / fsdp2 only (config validation): fp32 params
        numels = local_numels(cfg, lay, rank)
        local = sum(numels)
        return local * pb, local * gb, sum(adamw8bit_state_bytes(k) for k in numels)
    if lay.strategy == "fsdp2":  # per-tensor dim-0 chunks, as `to_local()` reports them
        local = fsdp2_local_numel(shapes, w, rank)
        return local * pb, local * gb, local * ob
    # DeepSpeed flattens and pads the partition to a multiple of W (ZeRO's stage_1_and_2.py):
    # ceil(n / W) elements per rank.
    part = -(-n // w)
    sp, sg, so = _sharded(lay.strategy)
    return ((part if sp else n) * pb, (part if sg else n) * gb, (part if so else n) * ob)


def block_params(cfg: ModelConfig) -> int:
    return sum(p.numel for p in param_shapes(cfg) if p.name.startswith("layers.0."))


def activation_bytes_per_token_layer(cfg: ModelConfig, bf16: bool, device: str) -> int:
    """Bytes one block saves for backward per token (derived op by op; see the test).

    a = bytes of the compute dtype (2 under bf16, 4 in fp32); C = d_model, kv = KV width.
    - each RMSNorm (distlm's `_RMSNormFn` on CPU, the fused `rms_norm` on CUDA: the same two
      tensors) keeps its input (4C: the fp32 residual stream x or h) and rstd (4); the next
      Linear keeps its input (aC).
    - attention: RoPE writes q, k and v into one new tensor (a(C + 2kv)) that SDPA keeps (the
      qkv projection's output is freed); SDPA's output (aC), which `out` keeps as a view, and its
      logsumexp (fp32, 4 per head). Flash / memory-efficient SDPA (CUDA, and torch's CPU flash
      kernel, with GQA handled without repeating k/v) keeps no T x T matrix.
    - SwiGLU: its fused gate|up input (2aF, the only tensor it saves) and the product fed to
      `down` (aF).
    """
    c, h = cfg.d_model, cfg.n_heads
    kv = cfg.n_kv_heads * (c // h)
    a = 2 if bf16 else 4
    norm = 4 * c + 4 + a * c
    attn = a * (c + 2 * kv) + a * c + 4 * h
    if cfg.qk_norm:  # RMSNorm on q and k, then a concatenated copy (approximate: not tested)
        attn += 4 * (c + kv) + 4 * (h + cfg.n_kv_heads) + a * (c + 2 * kv)
    ffn = 3 * a * ffn_hidden(cfg)
    return 2 * norm + attn + ffn


def rope_table_bytes(cfg: ModelConfig, lay: Layout) -> int:
    """Under bf16 each block's RoPE keeps bf16 copies of its cos and sin rows (T x hd/2 each)."""
    return cfg.n_layers * 2 * lay.seq_len * (cfg.d_model // cfg.n_heads) if lay.bf16 else 0


def activation_bytes(cfg: ModelConfig, lay: Layout) -> tuple[int, int]:
    """(saved activations of one micro-batch, one recomputed block's when checkpointing)."""
    tokens = lay.micro_batch_size * lay.seq_len
    per_layer = activation_bytes_per_token_layer(cfg, lay.bf16, lay.device) * tokens
    c = cfg.d_model
    chunked = bool(lay.loss_chunk_tokens)  # its saved gradients are counted in logits_bytes
    head_input = 0 if chunked else (2 if lay.bf16 else 4) * c
    tail = tokens * (4 * c + 4 + head_input)  # final norm, head
    # int64 ids (embedding backward); the plain loss also keeps the targets and its weight sum
    tail += tokens * 8 if chunked else tokens * 8 * 2 + 4
    if not lay.activation_checkpointing:
        return cfg.n_layers * per_layer + tail + rope_table_bytes(cfg, lay), 0
    # torch checkpoint keeps each block's input (the residual stream, fp32 under autocast since
    # the embedding output is fp32; bf16 when FSDP2 casts params to bf16) and recomputes one block
    residual = 2 if lay.bf16 and lay.strategy in ("fsdp2", "zero1", "zero2", "zero3") else 4
    return cfg.n_layers * tokens * residual * c + tail, per_layer


def logits_bytes(cfg: ModelConfig, lay: Layout) -> int:
    """Logits (aV), fp32 log-probs kept by cross-entropy (4V) and the fp32 grad of both (4V).

    Chunked (distlm/model/loss.py), per chunk of n tokens: the fp32 logits turned in place into
    the gradient (4nV) beside, under bf16, the matmul output or the gradient cast back (2nV),
    then the chunk's dx (anC) and, under bf16, its dW product (2VC); for the whole step the head's
    gradients computed in forward and kept until backward, dW fp32 (4VC) and dx in the residual
    dtype, and the weight cast to bf16 (2VC) under autocast.
    """
    tokens = lay.micro_batch_size * lay.seq_len
    a = 2 if lay.bf16 else 4
    v, c = padded_vocab(cfg), cfg.d_model
    if lay.loss_chunk_tokens:
        n = min(lay.loss_chunk_tokens, tokens)
        chunk = n * v * (6 if lay.bf16 else 4) + n * c * a + (2 * v * c if lay.bf16 else 0)
        return chunk + loss_saved_bytes(cfg, lay) + (2 * v * c if lay.bf16 else 0)
    extra_cast = 4 if lay.bf16 else 0  # `.float()` copy of bf16 logits for the loss
    return tokens * padded_vocab(cfg) * (a + extra_cast + 4 + 4)


def loss_saved_bytes(cfg: ModelConfig, lay: Layout) -> int:
    """What the loss keeps for backward: the plain loss its fp32 log-probs (4V per token); the
    chunked loss the gradients it computed in forward, dW (fp32) and dx (the residual dtype)."""
    tokens = lay.micro_batch_size * lay.seq_len
    v, c = padded_vocab(cfg), cfg.d_model
    if not lay.loss_chunk_tokens:
        return tokens * v * 4
    residual = 2 if lay.bf16 and lay.strategy in ("fsdp2", "zero1", "zero2", "zero3") else 4
    return 4 * v * c + tokens * c * residual


def gathered_bytes(cfg: ModelConfig, lay: Layout) -> int:
    """ZeRO-3 / FSDP2: unsharded params + grads of the blocks in flight, and the root's params."""
    if lay.strategy not in ("fsdp2", "zero3") or (lay.world_size == 1 and lay.offload == "none"):
        return 0  # (offloaded, even one rank computes on gathered copies of host-held params)
    pb = 2 if lay.bf16 else 4
    layer = block_params(cfg) * pb
    # FSDP2's root (embedding, final norm, head) stays gathered after forward (distlm/parallel)
    root = sum(p.numel for p in param_shapes(cfg) if not p.in_block) * pb
    # in backward a block's unsharded grads (fp32 for the reduce) sit beside its params
    return lay.prefetch_layers * layer + block_params(cfg) * 4 + root


def cast_weight_bytes(cfg: ModelConfig, lay: Layout) -> int:
    """autocast caches a bf16 copy of each fp32 weight from first use until backward frees it."""
    if not lay.bf16 or lay.strategy in ("fsdp2", "zero1", "zero2", "zero3"):
        return 0  # FSDP2 casts at all-gather; DeepSpeed's params already are bf16
    # every Linear weight, and the embedding only when tied (then it is the head's weight)
    # the chunked loss casts the head inside its forward and frees it (counted in logits_bytes)
    skip = ("embed.weight", "head.weight") if lay.loss_chunk_tokens else ("embed.weight",)
    cast = [p for p in param_shapes(cfg) if len(p.shape) == 2 and p.name not in skip]
    tied_head = cfg.tie_embeddings and not lay.loss_chunk_tokens
    head = padded_vocab(cfg) * cfg.d_model if tied_head else 0
    return 2 * (sum(p.numel for p in cast) + head)


def estimate(cfg: ModelConfig, lay: Layout, rank: int = 0) -> MemoryBreakdown:
    params, grads, opt = state_bytes(cfg, lay, rank)
    saved, recompute = activation_bytes(cfg, lay)
    return MemoryBreakdown(
        params=params,
        grads=grads,
        optimizer=opt,
        gathered=gathered_bytes(cfg, lay),
        cast_weights=cast_weight_bytes(cfg, lay),
        activations=saved,
        recompute=recompute,
        logits=logits_bytes(cfg, lay),
        workspace=int(CUDA_CONTEXT_BYTES) if lay.device == "cuda" else 0,
        host=host_bytes(cfg, lay, rank),
    )
