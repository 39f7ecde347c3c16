"""Mixing datasets by weight: `"data/web:0.7,data/code:0.3"`.

The global sample stream is cut into blocks of BLOCK samples; inside every block the same smooth
weighted round-robin pattern assigns each position to a dataset (each dataset gets its largest-
remainder share of the block, spread evenly), so sample g's dataset and its index in that dataset's
own stream are closed-form functions of g: deterministic, world-size free, exact on resume.
"""

from __future__ import annotations

import numpy as np

from distlm.data.errors import DataError

BLOCK = 10_000  # samples per repeat of the pattern; weights resolve to 1e-4


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """`"dirA:0.7,dirB:0.3"` -> [(dirA, 0.7), (dirB, 0.3)]; a bare path has weight 1."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise DataError(f"data.path={spec!r}: expected a dataset directory or 'dirA:0.7,dirB:0.3'")
    out = []
    for part in parts:
        path, sep, weight = part.rpartition(":")
        if not sep or "/" in weight:  # no weight given (or the colon belongs to the path)
            path, weight = part, "1"
        try:
            w = float(weight)
        except ValueError:
            raise DataError(
                f"data.path={spec!r}: weight {weight!r} of {path!r} is not a number"
            ) from None
        if not w > 0:
            raise DataError(f"data.path={spec!r}: weight of {path!r} must be > 0, got {w}")
        out.append((path, w))
    return out


class MixtureSchedule:
    """Global sample index -> (dataset index, sample index in that dataset's stream)."""

    def __init__(self, weights: list[float], names: list[str] | None = None) -> None:
        shares = np.asarray(weights, dtype=np.float64) / sum(weights)
        counts = np.floor(shares * BLOCK).astype(np.int64)
        for i in np.argsort(-(shares * BLOCK - counts), kind="stable")[: BLOCK - counts.sum()]:
            counts[i] += 1  # largest remainders
        for i, c in enumerate(counts):
            if c == 0:
                name = names[i] if names else i
                raise DataError(
                    f"mixture weight of {name!r} is below 1/{BLOCK}: it would get no samples"
                )
        self.counts = counts
        # smooth weighted round-robin over one block: pick the dataset furthest behind its share
        self.pattern = np.empty(BLOCK, dtype=np.int64)
        self.rank = np.empty(BLOCK, dtype=np.int64)
        given = np.zeros(len(counts), dtype=np.int64)
        for j in range(BLOCK):
            d = int(np.argmax(counts * (j + 1) / BLOCK - given))
            self.pattern[j], self.rank[j] = d, given[d]
            given[d] += 1

    def assign(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks, positions = np.divmod(np.asarray(sample_ids, dtype=np.int64), BLOCK)
        datasets = self.pattern[positions]
        return datasets, blocks * self.counts[datasets] + self.rank[positions]
