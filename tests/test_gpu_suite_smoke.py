"""The GPU acceptance suite's one command, run at smoke size on CPU so its code never rots.

`bash bench/gpu_suite.sh --smoke` builds every row's model the suite builds on a GPU (ours eager
and with FP8, emulated here; the transformers peer), steps it, measures it and appends a table;
here it writes to a temporary file, never to bench/RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys

from dist_utils import ROOT


def test_gpu_suite_smoke_appends_a_table(tmp_path):
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes()
    out = tmp_path / "results.md"
    proc = subprocess.run(
        ["bash", "bench/gpu_suite.sh", "--smoke", "--results", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "## GPU acceptance suite: CPU (smoke), " in text
    assert (
        "| model | variant | micro-batch | tokens/s | MFU | peak GB | planner GB | error |" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| tiny |")]
    variants = [row.split(" | ")[1] for row in rows]
    assert variants == ["bf16 eager", "bf16 eager + FP8 (emulated)", "transformers bf16 eager"]
    for row in rows:  # measured figures are numbers
        float(row.split(" | ")[3].replace(",", ""))  # tokens/s
        float(row.split(" | ")[5])  # peak GB
    assert results.read_bytes() == before  # the suite wrote only where it was told
