"""benchmarks/gpu_check.py is ready for a GPU: its dry run (CPU, tiny shapes) runs every part and writes the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_runs_every_part_and_writes_its_report(tmp_path):
    subprocess.run(
        [sys.executable, str(GPU_CHECK), "--dry-run", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    report = json.loads((tmp_path / "gpu_check-dry-run.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu (dry run)"
    for shape in report["attention"].values():
        assert shape["sdpa_dense_mask_ms"] > 0 and shape["flex_block_mask_ms"] > 0
    step = report["training_step"]
    assert step["step_s"] > 0 and step["useful_tflop"] <= step["executed_tflop"]
    assert report["sampling"]["bf16"]["seconds_per_frame"] > 0 and report["sampling"]["fp32"]["seconds_per_frame"] > 0
    (mfu,) = report["mfu"]["by_step"]
    assert mfu["useful_of_gemm_peak"] > 0 and mfu["useful_tflops"] <= mfu["executed_tflops"]
