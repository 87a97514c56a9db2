"""FLOPs of a training step (analytic, cross-checked by FlopCounterMode) against this machine's matmul
peak, and peak memory; on a GPU also bf16 model FLOP utilisation of the B and XL presets.

    python benchmarks/bench_utilization.py [--batch-size 8] [--steps 3] [--threads 1]

Writes RESULTS/utilization.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results); also `mimo bench utilization`;
`--help` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mimo.cli)

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from harness import (
    add_model_arguments,
    arm_overrides,
    arm_trainer,
    cpu_seconds_per_thread,
    fixed_batch,
    main,
    model_overrides,
    rounded_median,
    settings_of,
    significant,
    step_of,
    timed,
)
from mimo.config import Config, load_config, with_overrides
from mimo.devices import datasheet_bf16_peak
from mimo.models.attention import uses_flex
from mimo.train.distributed import default_device

GPU_PEAK_SIZE = 8192  # square bf16 matmul that saturates an H100 / A100
CPU_PEAK_SIZE = 2048  # square fp32 matmul, large enough for MKL/OpenBLAS's best blocking on a CPU
MIB = 2**20
# --tiny: a seconds-long smoke run (tests); its figures mean nothing.
TINY = {
    "preset": "micro",
    "frame_size": 16,
    "frames": 4,
    "batch_size": 2,
    "steps": 1,
    "matmul_size": 128,
    "peak_repeats": 2,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--frames", type=int, default=8, help="clip length T")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.5, help="MiMo mask ratio")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm")
    parser.add_argument("--matmul-size", type=int, default=None, help="side of the peak matmul")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--gpu-presets", nargs="+", default=["B", "XL"])
    parser.add_argument("--gpu-frame-size", type=int, default=32, help="a 256 px video's latent side")
    parser.add_argument("--gpu-patch-size", type=int, default=2, help="DiT-B/2, DiT-XL/2")
    parser.add_argument("--gpu-frames", type=int, default=16)
    parser.add_argument("--gpu-batch-size", type=int, default=2, help="XL at 7.4k tokens per clip: ~60 GB")


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the GPU attention kernels but not the CPU flash kernel that masked SDPA uses on CPU.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
}


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that torch's FlopCounterMode sees while `fn` runs (matmuls and attention, forward and backward)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return counter.get_total_flops()


@dataclass(frozen=True)
class MatmulPeak:
    """The dense matmul throughput this machine reaches: the best of several timed square matmuls.

    `flops_by_cpu_time` (CPU only) divides by the process CPU time per thread instead of wall time:
    the peak of the time the process actually got on its cores.
    """

    label: str
    flops_per_s: float
    median_flops_per_s: float
    flops_by_cpu_time: float | None

    def to_json(self) -> dict[str, Any]:
        gflops = {
            "gflops": self.flops_per_s,
            "median_gflops": self.median_flops_per_s,
            "gflops_by_cpu_time": self.flops_by_cpu_time,
        }
        return {"matmul": self.label} | {k: significant(v / 1e9) for k, v in gflops.items() if v is not None}


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> MatmulPeak:
    """Time `repeats` (size × size) matmuls after a warm-up: measured, not looked up in a datasheet."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, kernel selection
    times = [timed(lambda: a @ b, device) for _ in range(repeats)]
    flops = 2 * size**3
    by_cpu_time = None
    if device.type == "cpu":
        by_cpu_time = max(flops / cpu_seconds_per_thread(cpu) for _, cpu in times)
    return MatmulPeak(
        label=f"{size}x{size} {str(dtype).removeprefix('torch.')} on {device.type}",
        flops_per_s=max(flops / wall for wall, _ in times),
        median_flops_per_s=statistics.median(flops / wall for wall, _ in times),
        flops_by_cpu_time=by_cpu_time,
    )


def _release_freed_memory() -> None:
    """Hand memory that glibc keeps after free() back to the OS, so resident size is live memory only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on Linux the resident high-water mark (VmHWM).

    VmHWM is reset by writing 5 to /proc/self/clear_refs (after returning freed heap to the OS), so the
    peak is the block's own; where that is not possible, ru_maxrss (the peak since the process started)
    is reported and says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM"

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise OSError(f"{key} not in /proc/self/status")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        _release_freed_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.before = self._status_kib("VmRSS") * 1024
        except OSError:
            self.method, self.before = "ru_maxrss (peak since process start)", 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "VmHWM":
            self.peak = self._status_kib("VmHWM") * 1024
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def report(self) -> dict[str, Any]:
        return {
            "peak_mib": round(self.peak / MIB, 1),
            "peak_above_start_mib": round((self.peak - self.before) / MIB, 1),
            "method": self.method,
        }


def _utilization_of(config: Config, batch_size: int, steps: int, peak: MatmulPeak) -> dict[str, Any]:
    """FLOPs (analytic and counted), step time, achieved FLOP/s against `peak`, and peak memory of one config."""
    batch = fixed_batch(config, batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = arm_trainer(config, [], Path(scratch))
        step = step_of(trainer, batch)
        step()  # warm-up; creates the optimizer state
        counted = counted_flops(step)
        memory = PeakMemory(trainer.device)
        with memory:
            step()
        times = [timed(step, trainer.device) for _ in range(steps)]
        flops = trainer.objective.training_flops(batch_size)
        device = trainer.device
    flex = uses_flex(config.model.attention, device)
    analytic = flops.block_sparse if flex else flops.dense  # what this device's attention executes
    useful = flops.useful  # masked-out attention pairs are not useful work
    wall, cpu = rounded_median([t[0] for t in times], 6), rounded_median([t[1] for t in times], 6)
    result = {
        "attention": "flex (block-sparse)" if flex else "sdpa (dense mask)",
        "flops_analytic": analytic,
        "flops_useful": useful,
        "flops_counted": counted,
        "counted_over_analytic": round(counted / analytic, 4),
        "median_wall_s": wall,
        "median_cpu_s": cpu,
        "achieved_gflops": significant(analytic / wall / 1e9),
        "achieved_useful_gflops": significant(useful / wall / 1e9),
        "fraction_of_peak": round(analytic / wall / peak.flops_per_s, 4),
        "useful_fraction_of_peak": round(useful / wall / peak.flops_per_s, 4),
        "memory": memory.report(),
    }
    datasheet = datasheet_bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if datasheet is not None and config.train.precision == "bf16":  # MFU: against the datasheet, not a measurement
        result["datasheet_bf16_tflops"] = datasheet / 1e12
        result["mfu_executed"] = round(analytic / wall / datasheet, 4)
        result["mfu_useful"] = round(useful / wall / datasheet, 4)
    if peak.flops_by_cpu_time is not None:  # CPU time: what the process got, so sharing the cores cancels out
        per_thread = cpu_seconds_per_thread(cpu)
        result["achieved_gflops_by_cpu_time"] = significant(analytic / per_thread / 1e9)
        result["fraction_of_peak_by_cpu_time"] = round(analytic / per_thread / peak.flops_by_cpu_time, 4)
        result["useful_fraction_of_peak_by_cpu_time"] = round(useful / per_thread / peak.flops_by_cpu_time, 4)
    return result


def measure(args: argparse.Namespace, publish: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """FLOP utilisation of a training step on this machine's device; bf16 MFU of large presets on a GPU."""
    base = load_config(args.config, [*model_overrides(args), f"train.batch_size={args.batch_size}"])
    device = torch.device(default_device())
    size = CPU_PEAK_SIZE if device.type == "cpu" else GPU_PEAK_SIZE
    peak = matmul_peak(device, torch.float32, args.matmul_size or size, args.peak_repeats)
    results: dict[str, Any] = {"peak": peak.to_json()}
    for name, overrides in arm_overrides([args.ratio]).items():
        config = with_overrides(base, overrides)
        results[name] = _utilization_of(config, args.batch_size, args.steps, peak)
    if device.type == "cuda":
        results["gpu_bf16"] = _gpu_bf16_utilization(args, device)
    else:
        results["gpu_bf16"] = {"skipped": "no CUDA device on this machine"}
    return {"settings": settings_of(args, base, device, timed_steps=args.steps), "results": results}


def _gpu_bf16_utilization(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """bf16 training steps of the large presets (paper-sized sequences) against the bf16 matmul peak: MFU."""
    peak = matmul_peak(device, torch.bfloat16, GPU_PEAK_SIZE, args.peak_repeats)
    out: dict[str, Any] = {
        "peak": peak.to_json(),
        "frame_size": args.gpu_frame_size,
        "patch_size": args.gpu_patch_size,
        "num_frames": args.gpu_frames,
        "batch_size": args.gpu_batch_size,
    }
    for preset in args.gpu_presets:
        base = load_config(
            args.config,
            [
                f"model.preset={preset}",
                f"data.frame_size={args.gpu_frame_size}",
                f"model.patch_size={args.gpu_patch_size}",
                f"data.num_frames={args.gpu_frames}",
                f"train.batch_size={args.gpu_batch_size}",
                "train.precision=bf16",
            ],
        )
        for name, overrides in arm_overrides([args.ratio]).items():
            out[f"{preset}/{name}"] = _utilization_of(
                with_overrides(base, overrides), args.gpu_batch_size, args.steps, peak
            )
    return out


if __name__ == "__main__":
    main("utilization")
