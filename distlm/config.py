"""The one typed config tree of distlm.

Every field is typed, documented in one line and carries its unit in its name. The yaml presets in
`configs/` mirror this tree key for key. Loading (see `distlm.config_loader`) goes: structured
schema <- yaml presets <- CLI dotlist, then converts to these plain dataclasses; no omegaconf object
travels past the entry point. Values derived from the tree and the world size (micro-batch,
accumulation steps, device, dtype) are computed once in `resolve()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A config key, value or combination is invalid; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "tiny"  # preset name, for logs only
    vocab_size: int = 4096  # tokenizer vocab; the embedding is padded to vocab_pad_multiple
    vocab_pad_multiple: int = (
        64  # pad the embedding rows to a multiple of this (tensor-core shapes)
    )
    d_model: int = 256  # residual stream width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads; head_dim = d_model / n_heads
    n_kv_heads: int = 4  # key/value heads (GQA); must divide n_heads
    ffn_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 256  # rounding for the derived ffn_hidden
    max_seq_len: int = 2048  # longest sequence RoPE tables are built for
    rope_theta: float = 10000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    qk_norm: bool = False  # RMSNorm on per-head queries and keys before RoPE
    tie_embeddings: bool = True  # share the token embedding with the output head
    init_std: float = (
        0.02  # std of the normal init; output projections scaled by 1/sqrt(2*n_layers)
    )
    loss_chunk_tokens: int = 1024  # tokens per chunk of the fused head + loss; 0 = plain logits
    init_from: str = ""  # "hf:DIR": start from a Hugging Face Llama/Qwen3 folder; "" = random


@dataclass
class DataConfig:
    path: str = (
        "data/demo"  # dataset dir from `data_tools pretokenize`, or a mix "dirA:0.7,dirB:0.3"
    )
    train_split: str = "train"  # split name of the training manifest
    val_split: str = "val"  # split name of the validation manifest ("" = no validation)
    seed: int = 1234  # seed of the window permutation; the batch sequence depends only on it
    verify_checksums: bool = False  # sha256 + token id scan of every shard before step 0
    prefetch_batches: int = 2  # global batches prepared ahead by the background thread


@dataclass
class TrainConfig:
    seq_len: int = 256  # tokens per training sample
    global_batch_tokens: int = 16384  # tokens per optimizer step, over all ranks
    micro_batch_size: int = 0  # samples per forward on one rank; 0 = the whole local batch
    steps: int = 200  # optimizer steps
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 20  # linear warmup steps
    schedule: str = "cosine"  # cosine | wsd | constant
    wsd_decay_fraction: float = 0.2  # wsd: fraction of steps spent in the final linear decay
    weight_decay: float = 0.1  # AdamW decay on matrices (not on norms, biases, embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    eval_every_steps: int = 50  # validation interval; 0 = never
    eval_batches: int = 4  # global validation batches per evaluation
    seed: int = 0  # seed of model init and dropout-free RNG streams
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile each transformer block
    fp8: str = "false"  # false | true | auto: torchao float8 matmuls (auto: sm_89+, compiled, big)
    fp8_recipe: str = "tensorwise"  # tensorwise | rowwise (finer scales; no cuBLAS on sm_120)
    fp8_auto_min_tokens: int = 16384  # train.fp8=auto: smallest micro-batch, tokens, to use FP8
    sample_tokens: int = 64  # tokens generated at the end of training (0 = no sample)
    sample_prompt: str = ""  # text the end-of-run sample continues ("" = a new document)
    sample_temperature: float = 0.8  # softmax temperature of the sample (lower: likelier tokens)
    sample_top_k: int = 40  # the sample draws from the k most likely tokens
    max_nonfinite_steps: int = 3  # consecutive non-finite loss/grad steps before the run stops
    spike_factor: float = 0.0  # loss > factor * moving average is a spike; 0 = detector off
    spike_rollback: bool = (
        False  # on a spike, roll back to the last checkpoint and skip its batches
    )
    optimizer: str = "adamw"  # adamw | adamw8bit (8-bit moments, bitsandbytes)


@dataclass
class ParallelConfig:
    strategy: str = "ddp"  # ddp | fsdp2 | zero1 | zero2 | zero3
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    ddp_bucket_cap_mb: int = 25  # DDP gradient bucket size
    fsdp_reshard_after_forward: bool = True  # FSDP2: free gathered params after forward (ZeRO-3)
    zero_bucket_size: int = 50_000_000  # DeepSpeed reduce / allgather bucket, elements
    zero_prefetch_bucket_size: int = 50_000_000  # DeepSpeed ZeRO-3 prefetch bucket, elements
    zero_overlap_comm: bool = True  # DeepSpeed: overlap gradient reduction with backward
    timeout_minutes: int = 10  # collective timeout before a hung job is torn down
    offload: str = "none"  # none | optimizer | all: CPU offload of optimizer (+ params) state
    grad_comm_dtype: str = "fp32"  # dtype of gradients on the wire (all-reduce/reduce-scatter)
    fsdp_prefetch_layers: int = 1  # FSDP2: blocks all-gathered ahead (1 = torch's implicit)


@dataclass
class HardwareConfig:
    name: str = "cpu"  # preset name
    gpu_name: str = "cpu"  # accelerator model
    gpus_per_node: int = 1  # accelerators per node (processes per node on CPU)
    num_nodes: int = 1  # nodes
    memory_gb: float = 0.0  # memory per accelerator, GB; 0 = unknown / host RAM
    peak_bf16_tflops: float = 0.0  # dense bf16 peak per accelerator, TFLOP/s; 0 = unknown
    interconnect: str = "none"  # none | pcie | nvlink
    intra_node_bandwidth_gbps: float = 0.0  # per-GPU bus bandwidth inside a node, GB/s
    inter_node_bandwidth_gbps: float = 0.0  # per-node network bandwidth, GB/s
    nccl_env: dict[str, str] = field(default_factory=dict)  # NCCL_* variables set at launch
    host_memory_gb: float = 0.0  # host RAM per node, GB (offload planning); 0 = this machine's


@dataclass
class LoggingConfig:
    run_dir: str = "runs/demo"  # config.yaml, tensorboard events and checkpoints go here
    log_every_steps: int = 10  # console + tensorboard interval
    tensorboard: bool = True  # write tensorboard scalars (rank 0)


@dataclass
class CheckpointConfig:
    every_steps: int = 100  # checkpoint interval; 0 = only at the end
    keep_last: int = 3  # checkpoints kept on disk (older ones are deleted)
    resume: str = "auto"  # auto (latest if any) | never | a checkpoint directory
    verify: bool = True  # check every file's checksum (files.json) before loading it
    async_save: bool = False  # ddp / fsdp2: write in the background; the loop stalls only to copy


@dataclass
class EvalConfig:
    every_steps: int = 0  # multiple-choice eval interval in steps; 0 = only at the end
    tasks: list[str] = field(default_factory=list)  # task .jsonl files (distlm/eval/tasks.py)
    batch_size: int = 16  # (context, ending) pairs per forward, per rank
    max_examples: int = 0  # first N examples of each task; 0 = all


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the world size (logged at start)."""

    world_size: int
    global_batch_size: int  # samples per optimizer step, all ranks
    local_batch_size: int  # samples per optimizer step, this rank
    micro_batch_size: int  # samples per forward, this rank
    grad_accum_steps: int  # micro-batches per optimizer step, this rank


STRATEGIES = ("ddp", "fsdp2", "zero1", "zero2", "zero3")
SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("auto", "bf16", "fp32")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest(n: int, multiple: int) -> str:
    lo = max(multiple, n // multiple * multiple)
    hi = lo + multiple if lo < n else lo
    return f"{lo}" if lo == hi else f"{lo} or {hi}"


def validate(cfg: Config) -> None:
    """Reject impossible values and combinations, naming the key."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} must be divisible by model.n_heads={m.n_heads}"
        )
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(
            f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads={m.n_heads}; "
            f"valid: {_divisors(m.n_heads)}"
        )
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"head dim d_model/n_heads={m.d_model // m.n_heads} must be even (RoPE)")
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={m.max_seq_len}")
    for key, value, choices in (
        ("parallel.strategy", p.strategy, STRATEGIES),
        ("train.schedule", t.schedule, SCHEDULES),
        ("train.dtype", t.dtype, DTYPES),
        ("train.device", t.device, ("auto", "cpu", "cuda")),
        ("parallel.grad_comm_dtype", p.grad_comm_dtype, ("fp32", "bf16")),
        ("train.fp8", t.fp8.lower(), ("false", "true", "auto")),
        ("train.fp8_recipe", t.fp8_recipe, ("tensorwise", "rowwise")),
    ):
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
    if t.global_batch_tokens % t.seq_len:
        raise ConfigError(
            f"train.global_batch_tokens={t.global_batch_tokens} must be a multiple of "
            f"train.seq_len={t.seq_len}; "
            f"nearest valid: {_nearest(t.global_batch_tokens, t.seq_len)}"
        )
    for key, value in (
        ("train.steps", t.steps),
        ("train.lr", t.lr),
        ("model.n_layers", m.n_layers),
        ("parallel.fsdp_prefetch_layers", p.fsdp_prefetch_layers),
    ):
        if value <= 0:
            raise ConfigError(f"{key}={value} must be > 0")
    if t.warmup_steps > t.steps:
        raise ConfigError(f"train.warmup_steps={t.warmup_steps} exceeds train.steps={t.steps}")
    if cfg.checkpoint.async_save and p.strategy not in ("ddp", "fsdp2"):
        raise ConfigError(
            f"checkpoint.async_save=true needs torch.distributed.checkpoint "
            f"(parallel.strategy=ddp or fsdp2); parallel.strategy={p.strategy} saves through "
            f"DeepSpeed, synchronously: set checkpoint.async_save=false"
        )
    validate_memory_features(cfg)


# which strategies can offload what, and which can step 8-bit AdamW (see distlm/parallel/)
OFFLOAD_STRATEGIES = {
    "optimizer": ("fsdp2", "zero1", "zero2", "zero3"),
    "all": ("fsdp2", "zero3"),
}
OPTIMIZERS = {"adamw": STRATEGIES, "adamw8bit": ("ddp", "fsdp2")}


def validate_memory_features(cfg: Config) -> None:
    """parallel.offload, train.optimizer and model.loss_chunk_tokens against the strategy."""
    p, t = cfg.parallel, cfg.train
    if p.offload not in ("none", *OFFLOAD_STRATEGIES):
        choices = ["none", *OFFLOAD_STRATEGIES]
        raise ConfigError(f"parallel.offload={p.offload!r} is not one of {choices}")
    if p.offload != "none" and p.strategy not in OFFLOAD_STRATEGIES[p.offload]:
        able = OFFLOAD_STRATEGIES[p.offload]
        raise ConfigError(
            f"parallel.offload={p.offload} is not supported by parallel.strategy={p.strategy}; "
            f"strategies that can: {', '.join(able)} (or set parallel.offload=none)"
        )
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={t.optimizer!r} is not one of {list(OPTIMIZERS)}")
    if p.strategy not in OPTIMIZERS[t.optimizer]:
        raise ConfigError(
            f"train.optimizer={t.optimizer} cannot run under parallel.strategy={p.strategy} "
            f"(DeepSpeed steps its own fp32 optimizer); use parallel.strategy="
            f"{' or '.join(OPTIMIZERS[t.optimizer])}, or train.optimizer=adamw"
        )
    if t.optimizer == "adamw8bit" and p.offload != "none":
        raise ConfigError(
            "train.optimizer=adamw8bit with parallel.offload is not supported (the 8-bit step "
            "runs on the accelerator); choose one: parallel.offload=none or train.optimizer=adamw"
        )
    if cfg.model.loss_chunk_tokens < 0:
        raise ConfigError(
            f"model.loss_chunk_tokens={cfg.model.loss_chunk_tokens} must be >= 0 (0 = plain loss)"
        )


def resolve(cfg: Config, world_size: int) -> Derived:
    """Derive the per-rank batch layout so the optimisation is the same at any world size."""
    validate(cfg)
    t = cfg.train
    global_bs = t.global_batch_tokens // t.seq_len
    if global_bs % world_size:
        valid = [
            b * t.seq_len
            for b in (
                global_bs // world_size * world_size,
                (global_bs // world_size + 1) * world_size,
            )
            if b > 0
        ]
        raise ConfigError(
            f"train.global_batch_tokens={t.global_batch_tokens} is {global_bs} samples of "
            f"seq_len {t.seq_len}, which does not split over world size {world_size}; "
            f"nearest valid train.global_batch_tokens: {' or '.join(map(str, valid))}"
        )
    local_bs = global_bs // world_size
    micro = t.micro_batch_size or local_bs
    if micro > local_bs or local_bs % micro:
        valid = [d for d in _divisors(local_bs)]
        raise ConfigError(
            f"train.micro_batch_size={micro} must divide the local batch of {local_bs} samples "
            f"(global {global_bs} / world size {world_size}); valid: {valid}"
        )
    return Derived(world_size, global_bs, local_bs, micro, local_bs // micro)
