"""The scaling model: single-rank compute + the strategy's bytes over the link + overlap, and the
part that explains a measured gap. Pure functions on synthetic measurements (no processes)."""

from __future__ import annotations

import pytest
from test_scale import TINY

from distlm.config_loader import load_config
from distlm.plan.comm_model import Link, estimate_comm, fit_link, step_traffic
from distlm.plan.scale import main, measured_rows
from distlm.plan.scale_model import explain_gap, predict


def _row(n: int, compute: float, comm: float = 0.0, data: float = 0.0, opt: float = 0.01) -> dict:
    """A scale_worker result, as `distlm scale` reads it."""
    step = compute + opt + comm
    return {
        "world_size": n,
        "step_time_s": step,
        "compute_s": compute,
        "optimizer_s": opt,
        "comm_wait_s": comm,
        "data_s": data,
        "data_source": "random tokens",
        "tokens_per_s": 128 * n / (step + data),
        "peak_mem_bytes": 1,
        # 2 ranks, 1 ms latency, 1 GB/s bus bandwidth: t = 1e-3 + bytes * 2 * (1/2) / 1e9
        "allreduce_sweep": [[b, 1e-3 + b / 1e9] for b in (1e4, 1e5, 1e6, 4e6)] if n > 1 else [],
        "wire_bytes": {},
    }


def test_link_is_fitted_from_the_sweep():
    link = fit_link([1e4, 1e5, 1e6, 4e6], [1e-3 + b / 1e9 for b in (1e4, 1e5, 1e6, 4e6)], 2)
    assert link.bus_gbps == pytest.approx(1.0) and link.latency_s == pytest.approx(1e-3)
    assert link.seconds(2e9, 2) == pytest.approx(2.002)


def test_prediction_starts_from_the_single_rank_step_not_world_n():
    cfg = load_config(TINY)
    base = _row(1, compute=0.10)
    slow = _row(2, compute=0.30, comm=0.001)  # 2 ranks compute 3x slower (a loaded machine)
    rows = measured_rows(cfg, [base, slow])
    pred = rows[1]["predicted_efficiency"]
    # the model's exposed comm on the fitted link: latency + 2 x grad bytes x 1/2 / 1 GB/s
    grads = rows[1]["collective_bytes_model"]
    expected_comm = 1e-3 + grads / 1e9
    assert pred == pytest.approx(0.11 / (0.11 + expected_comm), rel=1e-6)
    assert rows[1]["efficiency"] == pytest.approx(0.11 / 0.311)
    assert rows[1]["explained_by"] == "compute slowdown"
    assert rows[1]["gap_points"] > 50


def test_gap_parts_sum_to_the_step_difference_and_name_the_largest():
    cfg = load_config(TINY)
    base = _row(1, compute=0.10)
    pred = predict(cfg, 2, 0.11, 0.10, Link(1.0, 1e-3, "measured"), overlap=False)
    for row, culprit in (
        (_row(2, compute=0.10, comm=0.2), "exposed communication"),
        (_row(2, compute=0.10, comm=pred.exposed_s, data=0.3), "data"),
        (_row(2, compute=0.25, comm=pred.exposed_s), "compute slowdown"),
    ):
        parts, name = explain_gap(base, row, pred)
        assert name == culprit
        measured = row["step_time_s"] + row["data_s"]
        assert sum(parts.values()) == pytest.approx(measured - pred.step_s)
    parts, name = explain_gap(base, _row(2, compute=0.10, comm=pred.exposed_s), pred)
    assert name.startswith("none")


def test_bf16_gradients_halve_the_modelled_gradient_traffic():
    for strategy in ("ddp", "zero2", "fsdp2"):
        fp32 = step_traffic(strategy, 10**9, 8, 4, 4, 2)
        bf16 = step_traffic(strategy, 10**9, 8, 4, 2, 2)
        assert bf16.grad_bytes == fp32.grad_bytes / 2
        assert bf16.param_bytes == fp32.param_bytes
    ddp = step_traffic("ddp", 10**9, 8, 4, 2, 2)
    assert ddp.bus_bytes == 2 * 7 / 8 * 2e9  # the ring all-reduce of 2 GB
    # gloo runs reduce-scatter as an all-reduce: twice the ring bytes of NCCL's
    assert step_traffic("zero2", 1000, 2, 1, 4, 4, gloo=True).bus_bytes == 4000 + 2000
    assert step_traffic("zero2", 1000, 2, 1, 4, 4).bus_bytes == 2000 + 2000


def test_cpu_allows_no_overlap_gpu_hides_behind_backward():
    hw = load_config(["hardware=8x5090-pcie"]).hardware
    args = (hw, "ddp", 10**9, 8, 1, True, 1.0)
    hidden = estimate_comm(*args, link=Link(25.0))
    exposed = estimate_comm(*args, link=Link(25.0), overlap=False)
    ring_s = 7e9 / 25e9 + 160 * 30e-6  # 2 x 7/8 x 4 GB, in 160 buckets of 25 MB
    assert exposed.exposed_s == exposed.comm_s == pytest.approx(ring_s)
    assert hidden.exposed_s < 0.01  # 0.28 s of all-reduce behind 0.67 s of backward


@pytest.mark.parametrize("preset", ["8x5090-pcie", "2x8xh100"])
def test_predict_prints_fp32_and_bf16_tables_with_assumptions(preset, tmp_path, capsys):
    args = [
        "scale",
        "model=1b",
        f"hardware={preset}",
        "train.seq_len=2048",
        "train.global_batch_tokens=16384",
        "parallel.strategy=ddp",
        "train.micro_batch_size=2",
        "--predict",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "grad comm fp32: PREDICTED" in out and "grad comm bf16: PREDICTED" in out
    assert "assumptions:" in out and "assumed MFU" in out and "bus bandwidth" in out
    tables = __import__("json").loads((tmp_path / "scale.json").read_text())["tables"]
    fp32, bf16 = ([r["bus_bytes"] for r in t["rows"]] for t in tables)
    assert all(b == pytest.approx(f / 2) for f, b in zip(fp32, bf16, strict=True))
    comm = [[r["comm_s"] for r in t["rows"]] for t in tables]
    assert comm[1][-1] < comm[0][-1]
