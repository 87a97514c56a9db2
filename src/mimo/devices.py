"""What a GPU can do on paper: the datasheet's dense bf16 peak, the denominator of model FLOP utilisation.

MFU (PaLM, Chowdhery et al. 2022) divides the FLOPs a step needs by the device's datasheet peak, not by
a measured matmul peak; the benchmarks report both. Dense (no 2:4 sparsity) bf16 tensor-core figures.
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), FLOP/s); the first match wins, so specific names come first
DATASHEET_BF16_DENSE = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # H100 SXM5
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def datasheet_bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU by name; None for a device not in the table (or a CPU)."""
    for key, peak in DATASHEET_BF16_DENSE:
        if key in device_name:
            return peak
    return None
