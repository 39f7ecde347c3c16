"""`distlm scale`: a real 2-process CPU run writes the JSON, markdown, PNG and tensorboard files."""

import json

import pytest

from distlm.plan.scale import main

TINY = [  # a 2-layer model whose step takes ~0.02 s on one core
    "model=tiny",
    "hardware=cpu",
    "model.d_model=64",
    "model.n_layers=2",
    "model.vocab_size=512",
    "train.seq_len=32",
    "train.global_batch_tokens=128",
]


@pytest.mark.slow
def test_two_process_cpu_scale_report(tmp_path):
    out = tmp_path / "scale"
    args = [
        "scale",
        *TINY,
        "--world-sizes",
        "1,2",
        "--steps",
        "5",
        "--warmup",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads((out / "scale.json").read_text())
    rows = data["rows"]
    assert [r["world_size"] for r in rows] == [1, 2] and not data["predicted"]
    # timings on a shared 2-core box are noisy: check the report, not a performance bound
    assert rows[0]["efficiency"] == 1.0 and 0 < rows[1]["efficiency"] < 4
    assert rows[1]["tokens_per_step"] == 2 * rows[0]["tokens_per_step"]  # weak scaling
    assert 0 < rows[1]["predicted_efficiency"] <= 1 and rows[1]["peak_mem_bytes"] > 0
    # the bytes DDP handed to gloo in a profiled step are the model's, exactly
    assert rows[1]["collective_bytes_counted"] == pytest.approx(rows[1]["collective_bytes_model"])
    assert rows[1]["bus_gbps"] > 0 and rows[1]["explained_by"]
    assert (out / "scale.png").stat().st_size > 1000
    assert "| world size |" in (out / "scale.md").read_text()
    assert list((out / "tensorboard").iterdir())


def test_predicted_table_for_gpu_presets(tmp_path):
    assert (
        main(
            [
                "scale",
                "model=1b",
                "hardware=8xh100-nvlink",
                "train.seq_len=2048",
                "train.global_batch_tokens=16384",
                "--predict",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "scale.json").read_text())
    assert data["predicted"] and "PREDICTED" in data["title"]
    assert [r["world_size"] for r in data["rows"]] == [1, 2, 4, 8]
