"""Progress bar (MB/s, documents/s, tokens/s) and the summary table of a pre-tokenization run."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """A tqdm bar over input bytes on disk, with documents/s and tokens/s alongside."""

    def __init__(self, total_bytes: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.start = time.perf_counter()
        self.documents = self.tokens = self.bytes = 0
        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            desc="pretokenize",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def skip(self, disk_bytes: int) -> bool:
        """A unit done by an earlier, interrupted run. Returns False (for use in a filter)."""
        self.bar.update(disk_bytes)
        return False

    def update(self, disk_bytes: int, result) -> None:
        self.bytes += disk_bytes
        self.documents += len(result.lengths)
        self.tokens += int(result.lengths.sum())
        self.bar.update(disk_bytes)
        dt = max(self.elapsed(), 1e-9)
        self.bar.set_postfix_str(
            f"{self.documents / dt:,.0f} docs/s {self.tokens / dt / 1e6:,.2f} Mtok/s", refresh=False
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        self.bar.close()


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    cells = [header] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
        for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    return [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]


def _short(path: str, limit: int = 48) -> str:
    try:
        path = os.path.relpath(path)
    except ValueError:
        pass
    return path if len(path) <= limit else "..." + path[-limit + 3 :]


def format_summary(summary: dict, max_sources: int = 20) -> str:
    """The end-of-run table: per source, per split, and throughput."""
    lines = [f"pretokenize: {summary['status']} -> {summary['out_dir']}"]
    sources = summary.get("sources", [])
    if sources:
        keys = ["bytes", "documents", "tokens", "empty", "invalid_utf8", "bad_lines"]
        rows = [[_short(s["path"])] + [s[k] for k in keys] for s in sources[:max_sources]]
        if len(sources) > max_sources:
            rows.append([f"... {len(sources) - max_sources} more"] + [""] * len(keys))
        rows.append(["total"] + [sum(s[k] for s in sources) for k in keys])
        lines += [""] + _table(["source"] + keys, rows)
    splits = summary["splits"]
    rows = [[name, s["shards"], s["documents"], s["tokens"]] for name, s in splits.items()]
    lines += [""] + _table(["split", "shards", "documents", "tokens"], rows)
    if "elapsed_s" in summary and sources:
        dt = max(summary["elapsed_s"], 1e-9)
        total = {k: sum(s[k] for s in sources) for k in ("bytes", "documents", "tokens")}
        lines.append(
            f"\n{dt:.1f} s: {total['bytes'] / dt / 1e6:.2f} MB/s, {total['documents'] / dt:,.0f} "
            f"documents/s, {total['tokens'] / dt / 1e6:.2f} M tokens/s"
        )
    return "\n".join(lines)
