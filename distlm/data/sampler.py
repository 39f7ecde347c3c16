"""Which window of a token stream each global sample index reads.

Windows: the stream is cut into windows of seq_len + 1 tokens that overlap by one token
(window w = tokens [w * seq_len, w * seq_len + seq_len + 1)), so every token but the first is a
target exactly once per epoch; the last partial window is dropped. Sample g of the global stream
is in epoch g // num_windows and reads window perm_epoch[g % num_windows], where perm_epoch is a
permutation drawn from PCG64 seeded with (seed, stream_id, epoch). Nothing depends on world size.
"""

from __future__ import annotations

import numpy as np


class WindowSampler:
    def __init__(self, num_windows: int, seed: int, stream_id: int = 0) -> None:
        if num_windows <= 0:
            raise ValueError("num_windows must be > 0")
        self.num_windows = num_windows
        self.seed, self.stream_id = seed, stream_id
        self._perms: dict[int, np.ndarray] = {}  # epoch -> permutation (the two most recent)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.Generator(np.random.PCG64([self.seed, self.stream_id, epoch]))
            self._perms[epoch] = rng.permutation(self.num_windows)
            while len(self._perms) > 2:  # drop the oldest (dicts keep insertion order)
                del self._perms[next(iter(self._perms))]
        return self._perms[epoch]

    def windows(self, sample_ids: np.ndarray) -> np.ndarray:
        """Window id of each global sample index (any order, any epochs)."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        epochs, positions = np.divmod(sample_ids, self.num_windows)
        out = np.empty_like(sample_ids)
        for epoch in np.unique(epochs).tolist():
            sel = epochs == epoch
            out[sel] = self.permutation(epoch)[positions[sel]]
        return out

    def epoch_of(self, sample_id: int) -> int:
        return sample_id // self.num_windows
