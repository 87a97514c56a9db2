"""benchmarks/gpu_check.py is ready for a GPU: on a CPU at tiny shapes it runs every part for real, (a) attention
forward and backward both ways, (b) a training step uncompiled and compiled, (c) sampling in bf16 and fp32 and
(d) MFU of both steps, and writes the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
BUDGET_S = 120  # the bound for the whole CPU run


def test_gpu_check_on_a_cpu_at_tiny_shapes_runs_every_measurement_and_writes_its_report(tmp_path):
    subprocess.run(
        [sys.executable, str(GPU_CHECK), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
        timeout=BUDGET_S,
    )
    report = json.loads((tmp_path / "gpu_check-cpu-tiny.json").read_text())
    assert report["tiny"] and report["device"] == "cpu" and report["wall_s"] < BUDGET_S
    for shape in report["attention"].values():
        assert shape["sdpa_dense_mask_ms"] > 0 and shape["flex_block_mask_ms"] > 0
    for key, compiled in (("training_step", False), ("training_step_compiled", True)):
        step = report[key]
        assert step["compile"] is compiled and step["step_s"] > 0 and step["useful_tflop"] <= step["executed_tflop"]
    assert report["sampling"]["bf16"]["seconds_per_frame"] > 0 and report["sampling"]["fp32"]["seconds_per_frame"] > 0
    assert [row["compile"] for row in report["mfu"]["by_step"]] == [False, True]
    for mfu in report["mfu"]["by_step"]:
        assert mfu["useful_of_gemm_peak"] > 0 and mfu["useful_tflops"] <= mfu["executed_tflops"]
