"""The training and validation loaders the trainer builds from `DataConfig`.

Global batch k is global samples [k * B, (k + 1) * B); rank r of W takes samples
[k * B + r * B / W, k * B + (r + 1) * B / W) and cuts them into micro-batches. So the sequence of
global batches depends only on (datasets, seed, seq_len, B), never on the world size or the
micro-batch, and the loader's whole state is the number of samples consumed.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from distlm.config import Config, DataConfig, Derived
from distlm.data.dataset import SampleSource, open_mixture
from distlm.data.errors import DataError
from distlm.data.token_range import check_batch

STATE_VERSION = 1
Batch = list[tuple[torch.Tensor, torch.Tensor]]  # [(inputs, targets)], each (micro, seq_len) int64


class _BatchMaker:
    """Builds this rank's micro-batches of global batch k on the CPU (pinned when for CUDA)."""

    def __init__(
        self,
        source: SampleSource,
        seq_len: int,
        global_batch_size: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        if global_batch_size % world_size or (global_batch_size // world_size) % micro_batch_size:
            raise DataError(
                f"global batch {global_batch_size} must split into world size {world_size} "
                f"x micro-batches of {micro_batch_size}"
            )
        self.source, self.seq_len = source, seq_len
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank, self.device = rank, device
        self.pin = device.type == "cuda"

    def make(self, k: int) -> list[torch.Tensor]:
        first = k * self.global_batch_size + self.rank * self.local_batch_size
        ids = np.arange(first, first + self.local_batch_size, dtype=np.int64)
        shape = (self.local_batch_size, self.seq_len + 1)
        windows = torch.empty(shape, dtype=torch.int64, pin_memory=self.pin)  # (local_B, T + 1)
        self.source.read(ids, windows.numpy())
        check_batch(self.source, k, ids, windows.numpy())  # an id >= vocab: DataError, not step 1
        m = self.micro_batch_size
        return [windows[i : i + m] for i in range(0, len(ids), m)]

    def to_device(self, windows: list[torch.Tensor]) -> Batch:
        """(micro, T + 1) windows -> (inputs, targets) views, each (micro, T), on the device.

        One copy of the window per sample instead of two: inputs and targets overlap in memory.
        """
        if self.device.type != "cpu":
            windows = [w.to(self.device, non_blocking=self.pin) for w in windows]
        return [(w[:, :-1], w[:, 1:]) for w in windows]


class TrainLoader:
    """next_batch(): this rank's micro-batches of the next global batch, prefetched by a thread."""

    def __init__(self, maker: _BatchMaker, seed: int, prefetch_batches: int) -> None:
        self._maker, self.seed = maker, seed
        self._prefetch = max(1, prefetch_batches)
        self.batches_consumed = 0
        self._thread: threading.Thread | None = None
        self._start()

    @property
    def epoch(self) -> int:
        """Epoch (of the first dataset) the next batch starts in."""
        return self._maker.source.epoch(self.batches_consumed * self._maker.global_batch_size)

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=self._prefetch)
        self._thread = threading.Thread(
            target=self._produce,
            args=(self.batches_consumed, self._stop, self._queue),
            name="distlm-data-prefetch",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, k: int, stop: threading.Event, q: queue.Queue) -> None:
        while not stop.is_set():
            try:
                item: object = (k, self._maker.make(k))
            except BaseException as e:  # handed to next_batch(), which raises it
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            k += 1

    def next_batch(self) -> Batch:
        if self._thread is None:
            raise DataError("TrainLoader.next_batch() after close()")
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        k, batch = item
        assert k == self.batches_consumed, (k, self.batches_consumed)
        self.batches_consumed += 1
        return self._maker.to_device(batch)

    def state_dict(self) -> dict:
        m = self._maker
        return {
            "version": STATE_VERSION,
            "samples_consumed": self.batches_consumed * m.global_batch_size,
            "batches_consumed": self.batches_consumed,
            "global_batch_size": m.global_batch_size,
            "seq_len": m.seq_len,
            "seed": self.seed,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume after `samples_consumed` samples; the world size and micro-batch may differ."""
        m = self._maker
        for key, mine in (("seq_len", m.seq_len), ("seed", self.seed)):
            if state.get(key) != mine:
                raise DataError(
                    f"loader state has {key}={state.get(key)!r} but this run has "
                    f"{mine}: the data stream would not continue where it stopped"
                )
        samples = int(state["samples_consumed"])
        if samples % m.global_batch_size:
            raise DataError(
                f"loader state consumed {samples} samples, not a whole number of "
                f"global batches of {m.global_batch_size}"
            )
        self.close()
        self.batches_consumed = samples // m.global_batch_size
        self._start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __del__(self) -> None:
        self.close()


class ValLoader:
    """The first `num_batches` global batches of the val split (this rank's part), always equal."""

    def __init__(self, maker: _BatchMaker, num_batches: int) -> None:
        self._maker, self.num_batches = maker, num_batches
        needed = num_batches * maker.global_batch_size
        available = min(maker.source.windows_per_epoch())
        if needed > available:
            warnings.warn(
                f"validation needs {needed} samples but {maker.source.splits[0].path} has "
                f"{available} windows of {maker.seq_len + 1} tokens: some repeat",
                stacklevel=3,
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(self.num_batches):
            yield from self._maker.to_device(self._maker.make(k))

    def __len__(self) -> int:
        """Micro-batches per pass, on this rank."""
        return self.num_batches * self._maker.local_batch_size // self._maker.micro_batch_size


def _maker(
    cfg: DataConfig,
    split: str,
    vocab_size: int,
    seq_len: int,
    global_batch_size: int,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> _BatchMaker:
    splits, weights = open_mixture(cfg.path, split, vocab_size, cfg.verify_checksums)
    source = SampleSource(splits, weights, seq_len, cfg.seed)
    return _BatchMaker(
        source, seq_len, global_batch_size, micro_batch_size, rank, world_size, torch.device(device)
    )


def loader_args(cfg: Config, derived: Derived, rank: int, device: torch.device) -> dict:
    """The batch layout every loader builder takes (train, val, eval), from the run's config."""
    return dict(
        seq_len=cfg.train.seq_len,
        global_batch_size=derived.global_batch_size,
        micro_batch_size=derived.micro_batch_size,
        rank=rank,
        world_size=derived.world_size,
        device=device,
        vocab_size=cfg.model.vocab_size,
    )


def build_train_loader(
    cfg: DataConfig,
    *,
    seq_len: int,
    global_batch_size: int,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    vocab_size: int,
) -> TrainLoader:
    """Validate the datasets (DataError before any batch), then start prefetching batch 0."""
    layout = (seq_len, global_batch_size, micro_batch_size, rank, world_size, device)
    maker = _maker(cfg, cfg.train_split, vocab_size, *layout)
    return TrainLoader(maker, cfg.seed, cfg.prefetch_batches)


def build_val_loader(
    cfg: DataConfig,
    *,
    seq_len: int,
    global_batch_size: int,
    micro_batch_size: int,
    num_batches: int,
    rank: int,
    world_size: int,
    device: torch.device,
    vocab_size: int,
) -> ValLoader | None:
    """The fixed validation iterator, or None when cfg.val_split is ""."""
    if not cfg.val_split:
        return None
    layout = (seq_len, global_batch_size, micro_batch_size, rank, world_size, device)
    maker = _maker(cfg, cfg.val_split, vocab_size, *layout)
    return ValLoader(maker, num_batches)
