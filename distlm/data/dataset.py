"""Open and validate the datasets named by `data.path`, and read samples from them.

Everything that can be wrong with a dataset is checked here, before step 0: manifest present and
readable, tokenizer present with the manifest's sha256, vocab size equal to the model's, each
shard's recorded largest token id below it, shards present with the manifest's size (and, when
asked, sha256 and a scan of their token ids), one tokenizer across a mixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distlm.data import atomic_files
from distlm.data.errors import DataError
from distlm.data.manifest import MANIFEST_NAME, TOKENIZER_NAME, Manifest, read_manifest
from distlm.data.mixture import MixtureSchedule, parse_mixture
from distlm.data.sampler import WindowSampler
from distlm.data.token_range import check_manifest, scan_split
from distlm.data.token_stream import TokenStream


@dataclass
class SplitData:
    path: Path  # the split directory
    manifest: Manifest
    stream: TokenStream


def check_tokenizer(dataset_dir: Path, manifest: Manifest) -> None:
    tok_path = dataset_dir / TOKENIZER_NAME
    if not tok_path.is_file():
        raise DataError(
            f"{tok_path}: missing; a dataset directory holds its tokenizer "
            "(written by data_tools.pretokenize)"
        )
    if atomic_files.sha256_file(tok_path) != manifest.tokenizer["sha256"]:
        raise DataError(
            f"{tok_path}: sha256 differs from the one in {dataset_dir / manifest.split}/"
            f"{MANIFEST_NAME}: the shards were made with another tokenizer"
        )


def open_split(
    dataset_dir: str | Path, split: str, vocab_size: int | None, verify_checksums: bool
) -> SplitData:
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DataError(
            f"{dataset_dir}: no such dataset directory (data.path); make one with "
            "`python -m data_tools.pretokenize` or `python -m data_tools.demo_data`"
        )
    manifest = read_manifest(dataset_dir / split)
    if vocab_size is not None and manifest.vocab_size != vocab_size:
        raise DataError(
            f"{dataset_dir / split / MANIFEST_NAME}: dataset vocab_size {manifest.vocab_size} but "
            f"model.vocab_size={vocab_size}; set model.vocab_size={manifest.vocab_size}"
        )
    check_manifest(dataset_dir / split, manifest)
    check_tokenizer(dataset_dir, manifest)
    stream = TokenStream(dataset_dir / split, manifest, verify_checksums)
    data = SplitData(dataset_dir / split, manifest, stream)
    if verify_checksums:
        scan_split(data)
    return data


def open_mixture(
    path_spec: str, split: str, vocab_size: int | None, verify_checksums: bool
) -> tuple[list[SplitData], list[float]]:
    entries = parse_mixture(path_spec)
    splits = [open_split(p, split, vocab_size, verify_checksums) for p, _ in entries]
    first = splits[0]
    for other in splits[1:]:
        if other.manifest.tokenizer["sha256"] != first.manifest.tokenizer["sha256"]:
            raise DataError(
                f"{other.path / MANIFEST_NAME} and {first.path / MANIFEST_NAME} were made with "
                "different tokenizers; a mixture needs one tokenizer"
            )
    return splits, [w for _, w in entries]


class SampleSource:
    """Global sample index -> a window of seq_len + 1 tokens, over one dataset or a mixture."""

    def __init__(
        self, splits: list[SplitData], weights: list[float], seq_len: int, seed: int
    ) -> None:
        self.splits, self.seq_len = splits, seq_len
        self.samplers = []
        for i, s in enumerate(splits):
            num_windows = (s.stream.total_tokens - 1) // seq_len
            if num_windows < 1:
                raise DataError(
                    f"{s.path}: {s.stream.total_tokens} tokens, too few for one "
                    f"window of seq_len + 1 = {seq_len + 1}"
                )
            self.samplers.append(WindowSampler(num_windows, seed, stream_id=i))
        self.schedule = (
            MixtureSchedule(weights, [str(s.path) for s in splits]) if len(splits) > 1 else None
        )

    def read(self, sample_ids: np.ndarray, out: np.ndarray) -> None:
        """out[j] = the seq_len + 1 tokens of sample sample_ids[j] (out: (n, T + 1) int64).

        Each window is cast to int64 as it is copied (one pass over the bytes, as a raw memmap
        gather does); a mixture reads each dataset's rows, then scatters them into place.
        """
        if self.schedule is None:
            self._read_one(0, sample_ids, out)
            return
        datasets, local_ids = self.schedule.assign(sample_ids)
        for d in np.unique(datasets).tolist():
            rows = np.flatnonzero(datasets == d)
            part = np.empty((len(rows), self.seq_len + 1), dtype=out.dtype)
            self._read_one(d, local_ids[rows], part)
            out[rows] = part

    @property
    def vocab_size(self) -> int:
        return self.splits[0].manifest.vocab_size  # one tokenizer across a mixture

    def locate(self, sample_id: int) -> tuple[int, int]:
        """(dataset index, window id) that global sample `sample_id` reads."""
        ids = np.array([sample_id], dtype=np.int64)
        if self.schedule is None:
            return 0, int(self.samplers[0].windows(ids)[0])
        datasets, local_ids = self.schedule.assign(ids)
        d = int(datasets[0])
        return d, int(self.samplers[d].windows(local_ids)[0])

    def _read_one(self, d: int, ids: np.ndarray, out: np.ndarray) -> None:
        self.splits[d].stream.gather(self.samplers[d].windows(ids) * self.seq_len, out)

    def windows_per_epoch(self) -> list[int]:
        return [s.num_windows for s in self.samplers]

    def epoch(self, sample_id: int) -> int:
        """Epoch of the first dataset at this point of the stream."""
        if self.schedule is None:
            return self.samplers[0].epoch_of(sample_id)
        share = self.schedule.counts[0] / self.schedule.counts.sum()
        return self.samplers[0].epoch_of(int(sample_id * share))
