"""Start-up time: seconds from process launch to the end of the tiny demo's first step.

    .venv/bin/python bench/bench_startup.py              # 3 fresh processes, min and median
    .venv/bin/python -X importtime -m distlm --help 2> imports.txt   # what the imports cost

Each run is a fresh `python` process running `python -m distlm train recipe=demo model=tiny`'s
own code (`distlm.train.cli.main`) for one step on CPU with the demo dataset (data/demo, made by
`python -m data_tools.demo_data --out data/demo`); the clock starts at the process's creation
time (from /proc) and stops when the strategy's first `step()` returns. Goal (issue 11): <= 5 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import os, sys, time
start = os.stat(f"/proc/{os.getpid()}").st_ctime  # process creation (Linux)
from distlm.parallel.ddp import DDPStrategy
step = DDPStrategy.step
def first_step(self):
    out = step(self)
    print(f"STARTUP_S {time.time() - start:.3f}", flush=True)
    os._exit(0)
DDPStrategy.step = first_step
from distlm.train import cli
cli.main(["train", "recipe=demo", "model=tiny", "hardware=cpu", "train.device=cpu",
          f"data.path={sys.argv[1]}", f"logging.run_dir={sys.argv[2]}", "checkpoint.resume=never"])
"""


def startup_seconds(data: Path) -> float:
    with tempfile.TemporaryDirectory() as run:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(data), run],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return float(next(x for x in out.splitlines() if x.startswith("STARTUP_S")).split()[1])


def main(argv: list[str]) -> None:
    data = Path(argv[0] if argv else "data/demo")
    if not (data / "train").exists():
        sys.exit(f"{data}: no dataset; run `.venv/bin/python -m data_tools.demo_data --out {data}`")
    runs = [startup_seconds(data) for _ in range(3)]
    print(
        f"launch -> end of first step, tiny demo on CPU ({os.cpu_count()} cores), 3 runs: "
        f"min {min(runs):.2f} s, median {statistics.median(runs):.2f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
