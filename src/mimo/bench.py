"""Benchmarks measured side by side: the training step, sampling, utilisation and convergence of MiMo.

`run_benchmark(name, args)` is the library entry (`mimo bench NAME`); the scripts in `benchmarks/`
are thin wrappers around it. Every benchmark writes `RESULTS/NAME.json` with the machine it ran on
(CPU model, cores, threads, torch, date, load) and regenerates `RESULTS/README.md`, a table of all
results found there. Arms that are compared run in one process, interleaved round by round, so a
ratio never mixes two runs. On a shared machine wall time depends on the neighbours, so CPU time is
recorded beside it and each result says which share of its threads' CPU time it actually got.

    step         MiMo at r = 0.25 / 0.5 / 0.75 against the CTF baseline: same model, same batch
    sampling     KV-cached against uncached generation at 8 / 16 / 32 frames, and the cost of one more frame
    utilization  FLOPs of a step (analytic, cross-checked by FlopCounterMode) against a measured matmul peak
    convergence  baseline and MiMo trained on the built-in videos, evaluated every K steps, speed-up factor
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mimo.config import Config, ConfigError, from_dict, load_config, read_yaml, with_overrides
from mimo.data import build_dataset
from mimo.devices import datasheet_bf16_peak
from mimo.diffusion.sampler import sample_video
from mimo.evaluate import generate, history_features, load_clips, proxy_config
from mimo.metrics.fvd import extract_feature_statistics
from mimo.metrics.probe import DEFAULT_C_GRID, linear_probe
from mimo.metrics.proxy_classifier import ProxyClassifierConfig, load_proxy_classifier, proxy_frechet_distance
from mimo.metrics.trajectory import trajectory_error
from mimo.models import build_backbone
from mimo.models.attention import uses_flex
from mimo.models.dit import FrameCausalDiT
from mimo.objectives.objective import TrainingObjective
from mimo.train.checkpoint import find_checkpoint
from mimo.train.memory import GPU_MEMORY_GB, preset_world_size, training_memory
from mimo.train.trainer import Trainer, load_trained_model, train

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERGENCE_CPU_CONFIG = REPO_ROOT / "configs" / "bench" / "convergence-cpu.yaml"
BASELINE_OVERRIDES = ("mimo.weight=0", "mimo.mask_ratio=0")  # the CTF baseline ("ACDiT" in the paper)
SHARED_CPU_SHARE = 0.9  # a benchmark that got less CPU than this share of its threads' time ran on a shared machine
GPU_PEAK_SIZE = 8192  # square bf16 matmul that saturates an H100 / A100
CPU_PEAK_SIZE = 2048  # square fp32 matmul, large enough for MKL/OpenBLAS's best blocking on a CPU
MIB = 2**20


# ----- the machine and the results folder ---------------------------------------------------------
def default_results_dir() -> Path:
    """`benchmarks/results/` of the source checkout (next to src/), else of the current directory."""
    root = REPO_ROOT if (REPO_ROOT / "benchmarks").is_dir() else Path.cwd()
    return root / "benchmarks" / "results"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a figure depends on: the CPU (or GPU), its cores, the threads torch uses, versions, date and load."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class CpuShare:
    """Wall and process CPU time since creation: the share of its threads' time the process got.

    On an idle machine a busy process gets close to 1; well below that, neighbours were taking the cores
    and wall times are inflated (CPU times much less so).
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def report(self) -> dict[str, Any]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        share = cpu / max(wall * torch.get_num_threads(), 1e-9)
        return {
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "cpu_share": round(share, 3),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "shared_machine": share < SHARED_CPU_SHARE,
        }


def write_result(name: str, payload: dict[str, Any], results_dir: Path) -> Path:
    """Write `name.json` (atomically: a resumed benchmark never reads half a file) and refresh the README table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=1) + "\n")
    partial.replace(path)
    (results_dir / "README.md").write_text(summary_table(results_dir))
    return path


# ----- timing and counting ------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call, with the GPU's queue drained on both sides."""
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _cpu_seconds_per_thread(cpu_seconds: float) -> float:
    """Process CPU time spread over torch's threads: the wall time the work would take on idle cores."""
    return max(cpu_seconds / torch.get_num_threads(), 1e-9)


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """Median over rounds of time / reference time in the same round: neighbours' load cancels within a round."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def training_step_flops(config: Config, batch_size: int) -> dict[str, int]:
    """FLOPs of one training step (forward + backward) as the models count them (TrainingObjective.training_flops):
    `total` executed by dense-mask SDPA (what FlopCounterMode sees on a CPU), `block_sparse` executed by
    FlexAttention, `useful` the allowed attention pairs only. Element-wise work is not counted, as in MFU."""
    with torch.device("meta"):
        objective = TrainingObjective(config, build_backbone(config))
    flops = objective.training_flops(batch_size)
    return {
        "total": flops.dense,
        "block_sparse": flops.block_sparse,
        "useful": flops.useful,
        "tokens_per_clip": objective.layout().length,
    }


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
        return {"matmul": self.label} | {k: _significant(v / 1e9) for k, v in gflops.items() if v is not None}


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> MatmulPeak:
    """Time `repeats` (size × size) matmuls after a warm-up: measured, not looked up in a datasheet."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, kernel selection
    times = [timed(lambda: a @ b, device) for _ in range(repeats)]
    flops = 2 * size**3
    by_cpu_time = None
    if device.type == "cpu":
        by_cpu_time = max(flops / _cpu_seconds_per_thread(cpu) for _, cpu in times)
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


# ----- shared set-up ------------------------------------------------------------------------------
def _model_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of the model-size arguments every benchmark but convergence takes."""
    overrides = [
        f"model.preset={args.preset}",
        f"data.frame_size={args.frame_size}",
        f"model.patch_size={args.patch_size}",
    ]
    if hasattr(args, "frames"):
        overrides.append(f"data.num_frames={args.frames}")
    return [*overrides, *args.set]


def fixed_batch(config: Config, batch_size: int) -> dict[str, torch.Tensor]:
    """The first `batch_size` training clips, stacked: every arm of a comparison steps on this same batch."""
    dataset = build_dataset(config.data, "train", num_clips=batch_size)
    items = [dataset[i] for i in range(batch_size)]
    return {key: torch.stack([item[key] for item in items]) for key in ("video", "label")}


def arm_trainer(config: Config, overrides: Sequence[str], run_dir: Path) -> Trainer:
    """A Trainer for one arm; every arm seeds its weights with train.seed, so all start from the same backbone."""
    return Trainer(with_overrides(config, [*overrides, f"train.out_dir={run_dir}", "train.tensorboard=false"]))


def _arms(ratios: Sequence[float]) -> dict[str, list[str]]:
    arms = {"baseline": list(BASELINE_OVERRIDES)}
    arms.update({f"mimo_r{r:g}": [f"mimo.mask_ratio={r}"] for r in ratios})
    return arms


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _median(values: Sequence[float], digits: int = 4) -> float:
    return round(statistics.median(values), digits)


# ----- 1. training step ---------------------------------------------------------------------------
def bench_step(args: argparse.Namespace) -> dict[str, Any]:
    """Step time of MiMo at each mask ratio against the baseline, interleaved round by round on one batch."""
    config = load_config(args.config, [*_model_overrides(args), f"train.batch_size={args.batch_size}"])
    batch = fixed_batch(config, args.batch_size)
    arms = _arms(args.ratios)
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {name: arm_trainer(config, o, Path(scratch) / name) for name, o in arms.items()}
        device = next(iter(trainers.values())).device
        steps = {name: _step_of(trainer, batch) for name, trainer in trainers.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        wall: dict[str, list[float]] = {name: [] for name in arms}
        cpu: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        for round_index in range(args.rounds):
            for name in names[round_index % len(names) :] + names[: round_index % len(names)]:  # rotate the order
                w, c = timed(steps[name], device)
                wall[name].append(w)
                cpu[name].append(c)
        configs = {name: t.config for name, t in trainers.items()}
    results = {}
    base_flops = training_step_flops(configs["baseline"], args.batch_size)["total"]
    for name in arms:
        flops = training_step_flops(configs[name], args.batch_size)
        wall_ratio = paired_ratio(wall[name], wall["baseline"])
        results[name] = {
            "mask_ratio": configs[name].mimo.mask_ratio,
            "mimo_weight": configs[name].mimo.weight,
            "tokens_per_clip": flops["tokens_per_clip"],
            "flops_per_step": flops["total"],
            "wall_s": [_significant(x, 6) for x in wall[name]],  # the ratios can be recomputed from these
            "cpu_s": [_significant(x, 6) for x in cpu[name]],
            "median_wall_s": _median(wall[name]),
            "median_cpu_s": _median(cpu[name]),
            "wall_ratio_to_baseline": round(wall_ratio, 3),
            "cpu_ratio_to_baseline": round(paired_ratio(cpu[name], cpu["baseline"]), 3),
            "flop_ratio_to_baseline": round(flops["total"] / base_flops, 3),
            "faster_than_baseline_percent": round(100 * (1 - wall_ratio), 1),
        }
    settings = _settings(args, configs["baseline"], device, rounds=args.rounds, warmup=args.warmup)
    return {"settings": settings, "results": results}


def _repeat(batch: dict[str, torch.Tensor], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The same batch forever, moved to the device once (outside any timing)."""
    on_device = {k: v.to(device) for k, v in batch.items()}
    while True:
        yield on_device


def _step_of(trainer: Trainer, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """One real optimiser step of `trainer` (loss, backward, clipping, AdamW, EMA) on `batch`."""
    batches = _repeat(batch, trainer.device)
    return lambda: trainer.train_step(batches)


def _settings(args: argparse.Namespace, config: Config, device: torch.device, **extra: Any) -> dict[str, Any]:
    depth, width, heads = config.model.size()
    return {
        "preset": config.model.preset,
        "depth": depth,
        "width": width,
        "heads": heads,
        "frame_size": config.data.frame_size,
        "patch_size": config.model.patch_size,
        "num_frames": config.data.num_frames,
        "context_frames": config.context_frames,
        "batch_size": args.batch_size,
        "precision": config.train.precision,
        "device": str(device),
        **extra,
    }


# ----- 2. sampling --------------------------------------------------------------------------------
def bench_sampling(args: argparse.Namespace) -> dict[str, Any]:
    """Cached against uncached generation at several lengths, interleaved, and the marginal cost of a frame."""
    config = load_config(args.config, [*_model_overrides(args), "train.task=unconditional"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.train.seed)
    model = build_backbone(config).to(device).eval()  # untrained: the cost does not depend on the weights

    def generate(frames: int, use_cache: bool) -> Callable[[], Any]:
        generator = torch.Generator().manual_seed(0)
        return lambda: sample_video(
            model, frames, batch_size=args.batch_size, steps=args.steps, generator=generator, use_cache=use_cache
        )

    times: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for frames in args.lengths:
            for use_cache in (True, False):
                times.setdefault((frames, use_cache), []).append(timed(generate(frames, use_cache), device))
    lengths = {}
    for frames in args.lengths:
        row = {}
        for kind, use_cache in (("cached", True), ("uncached", False)):
            row[f"{kind}_s"] = _median([wall for wall, _ in times[frames, use_cache]])
            row[f"{kind}_cpu_s"] = _median([cpu for _, cpu in times[frames, use_cache]])
            row[f"{kind}_frames_per_s"] = round(frames * args.batch_size / row[f"{kind}_s"], 3)
        row["cached_speedup"] = round(row["uncached_s"] / row["cached_s"], 2)
        row["cached_speedup_cpu_time"] = round(row["uncached_cpu_s"] / row["cached_cpu_s"], 2)
        lengths[str(frames)] = row
    marginal = []
    for short, long in itertools.pairwise(sorted(args.lengths)):
        row = {"frames": f"{short + 1}-{long}"}
        for kind in ("cached", "uncached"):
            for clock in ("s", "cpu_s"):
                extra_seconds = lengths[str(long)][f"{kind}_{clock}"] - lengths[str(short)][f"{kind}_{clock}"]
                row[f"{kind}_{clock}_per_frame"] = round(extra_seconds / (long - short), 4)
        marginal.append(row)
    settings = _settings(args, config, device, ode_steps=args.steps, solver="euler", rounds=args.rounds, window=None)
    return {"settings": settings, "results": {"lengths": lengths, "marginal_cost": marginal}}


# ----- 3. utilisation -----------------------------------------------------------------------------
def _utilization_of(config: Config, batch_size: int, steps: int, peak: MatmulPeak) -> dict[str, Any]:
    """FLOPs (analytic and counted), step time, achieved FLOP/s against `peak`, and peak memory of one config."""
    batch = fixed_batch(config, batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = arm_trainer(config, [], Path(scratch))
        step = _step_of(trainer, batch)
        step()  # warm-up; creates the optimizer state
        counted = counted_flops(step)
        memory = PeakMemory(trainer.device)
        with memory:
            step()
        times = [timed(step, trainer.device) for _ in range(steps)]
    flops = training_step_flops(config, batch_size)
    device = trainer.device
    flex = uses_flex(config.model.attention, device)
    analytic = flops["block_sparse"] if flex else flops["total"]  # what this device's attention executes
    useful = flops["useful"]  # masked-out attention pairs are not useful work
    wall, cpu = _median([t[0] for t in times], 6), _median([t[1] for t in times], 6)
    result = {
        "attention": "flex (block-sparse)" if flex else "sdpa (dense mask)",
        "flops_analytic": analytic,
        "flops_useful": useful,
        "flops_counted": counted,
        "counted_over_analytic": round(counted / analytic, 4),
        "median_wall_s": wall,
        "median_cpu_s": cpu,
        "achieved_gflops": _significant(analytic / wall / 1e9),
        "achieved_useful_gflops": _significant(useful / wall / 1e9),
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
        achieved = analytic / _cpu_seconds_per_thread(cpu)
        result["achieved_gflops_by_cpu_time"] = _significant(achieved / 1e9)
        result["fraction_of_peak_by_cpu_time"] = round(achieved / peak.flops_by_cpu_time, 4)
        result["useful_fraction_of_peak_by_cpu_time"] = round(
            useful / _cpu_seconds_per_thread(cpu) / peak.flops_by_cpu_time, 4
        )
    return result


def bench_utilization(args: argparse.Namespace) -> dict[str, Any]:
    """FLOP utilisation of a training step on this machine's device; bf16 MFU of large presets on a GPU."""
    base = load_config(args.config, [*_model_overrides(args), f"train.batch_size={args.batch_size}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = CPU_PEAK_SIZE if device.type == "cpu" else GPU_PEAK_SIZE
    peak = matmul_peak(device, torch.float32, args.matmul_size or size, args.peak_repeats)
    results: dict[str, Any] = {"peak": peak.to_json()}
    for name, overrides in _arms([args.ratio]).items():
        config = with_overrides(base, overrides)
        results[name] = _utilization_of(config, args.batch_size, args.steps, peak)
    if device.type == "cuda":
        results["gpu_bf16"] = _gpu_bf16_utilization(args, device)
    else:
        results["gpu_bf16"] = {"skipped": "no CUDA device on this machine"}
    return {"settings": _settings(args, base, device, timed_steps=args.steps), "results": results}


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
        for name, overrides in _arms([args.ratio]).items():
            out[f"{preset}/{name}"] = _utilization_of(
                with_overrides(base, overrides), args.gpu_batch_size, args.steps, peak
            )
    return out


# ----- memory census ------------------------------------------------------------------------------
def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Memory per GPU of one training step of each config, counted on fake tensors (mimo.train.memory)."""
    results = {}
    for path in args.configs:
        if "benchmark" in read_yaml(path):  # a convergence config: its training settings are the MiMo arm's
            config = load_convergence_config(path, args.set)[0]
        else:
            config = load_config(path, args.set)
        census = training_memory(config, args.gpus or preset_world_size(config))
        results[str(path)] = census.to_json()
    return {"settings": {"gpu_memory_gb": GPU_MEMORY_GB, "overrides": args.set}, "results": results}


# ----- 4. convergence -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvergenceSettings:
    """The `benchmark:` section of a convergence config: when and on what both arms are evaluated."""

    eval_every: int = 100  # K: training steps between evaluations
    eval_clips: int = 64  # held-out clips continued from their context frames (trajectory error, proxy FD)
    probe_clips: int = 512  # held-out clips whose history features are probed
    proxy_classifier_steps: int | None = None  # proxy-FD classifier's training steps; None: its own default
    proxy_classifier_width: int | None = None  # its width; None: its own default
    probe_c: float | None = None  # inverse L2 strength of the probe; None sweeps mimo.metrics.probe.DEFAULT_C_GRID
    seed: int = 0  # noise of the evaluation samples


HIGHER_IS_BETTER = {"trajectory_error": False, "proxy_fd": False, "probe_accuracy": True}
METRIC_LABELS = {
    "trajectory_error": "trajectory error (px, lower is better)",
    "proxy_fd": "proxy Fréchet distance (lower is better)",
    "probe_accuracy": "probe accuracy of history features (higher is better)",
}


def load_convergence_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, ConvergenceSettings]:
    """A training config (the MiMo arm) plus its `benchmark:` section, validated."""
    values = read_yaml(path)
    section = values.pop("benchmark", None) or {}
    known = {f.name for f in fields(ConvergenceSettings)}
    for key in section:
        if key not in known:
            raise ConfigError(f"unknown key 'benchmark.{key}' in {path}; valid keys: {', '.join(sorted(known))}")
    settings = ConvergenceSettings(**section)
    for key in ("eval_every", "proxy_classifier_steps", "proxy_classifier_width"):
        if getattr(settings, key) is not None and getattr(settings, key) < 1:
            raise ConfigError(f"benchmark.{key} must be at least 1, got {getattr(settings, key)}")
    if settings.eval_clips < 2 or settings.probe_clips < 10:
        raise ConfigError("benchmark.eval_clips must be at least 2 and benchmark.probe_clips at least 10")
    config = with_overrides(from_dict(values), list(overrides))
    if config.data.dataset != "synthetic" or config.train.task != "prediction":
        raise ConfigError(
            "the convergence benchmark measures motion on the built-in videos: set data.dataset=synthetic "
            "and train.task=prediction"
        )
    if not config.mimo.enabled:
        raise ConfigError("the config is the MiMo arm (the baseline is derived from it): set mimo.weight > 0")
    return config, settings


def evaluation_steps(total_steps: int, every: int) -> list[int]:
    """K, 2K, ... up to the budget, which is always evaluated."""
    steps = list(range(every, total_steps + 1, every))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def steps_to_reach(
    steps: Sequence[int], values: Sequence[float], target: float, higher_is_better: bool
) -> float | None:
    """The step from which a curve reaches `target` and stays there to the end; None if its last value misses it.

    Early evaluations of a barely trained model can be briefly good by accident (a blurry frame near
    the context), so the crossing is the last one: linearly interpolated between the last evaluation
    that misses the target and the next; the first step when none misses it.
    """
    reached = [(value >= target) if higher_is_better else (value <= target) for value in values]
    if not reached or not reached[-1]:
        return None
    misses = [index for index, ok in enumerate(reached) if not ok]
    if not misses:
        return float(steps[0])
    last_miss = misses[-1]
    before_step, before_value = steps[last_miss], values[last_miss]
    step, value = steps[last_miss + 1], values[last_miss + 1]
    return before_step + (step - before_step) * (target - before_value) / (value - before_value)


def _rounded(steps: float | None) -> float | None:
    return None if steps is None else round(steps, 1)


def convergence_summary(evaluations: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per metric: the baseline's final value, the steps each arm needs to reach it (and stay), and their ratio.

    The speed-up is baseline steps / MiMo steps to the same target under the same rule. On a steadily
    improving baseline that is the paper's budget / MiMo steps; on a noisy one it does not credit MiMo
    for a baseline that was better before its last evaluation. Only MiMo evaluations within the
    baseline's budget so far count, so a partial run compares like with like. When MiMo never reaches
    the baseline's final value, the roles swap: the steps the baseline needs to reach MiMo's value at the
    same budget, over that budget (a factor below 1: MiMo is that much slower).
    """
    baseline = {int(s): v for s, v in evaluations.get("baseline", {}).items()}
    mimo = {int(s): v for s, v in evaluations.get("mimo", {}).items()}
    if not baseline or not mimo:
        return {}
    final_step = max(baseline)
    baseline_steps = sorted(baseline)
    mimo_steps = sorted(s for s in mimo if s <= final_step)
    summary = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        target = baseline[final_step][metric]
        baseline_curve = [baseline[s][metric] for s in baseline_steps]
        base = steps_to_reach(baseline_steps, baseline_curve, target, higher)
        reached = steps_to_reach(mimo_steps, [mimo[s][metric] for s in mimo_steps], target, higher)
        # reached at an arm's first evaluation: its true crossing may be earlier
        lower_bound = reached == mimo_steps[0]
        upper_bound = base == baseline_steps[0]
        known = reached is not None and not (lower_bound and upper_bound)
        speedup = round(base / reached, 2) if known else None
        mimo_final = mimo[final_step][metric] if final_step in mimo else None
        baseline_to_mimo_final = None
        if reached is None and mimo_final is not None:
            baseline_to_mimo_final = steps_to_reach(baseline_steps, baseline_curve, mimo_final, higher)
            # the baseline was already there at its first evaluation: MiMo is at most this fast
            upper_bound = baseline_to_mimo_final == baseline_steps[0]
            known = baseline_to_mimo_final is not None
            speedup = round(baseline_to_mimo_final / final_step, 2) if known else None
            lower_bound = False
        summary[metric] = {
            "baseline_final": target,
            "baseline_final_step": final_step,
            "baseline_steps_to_reach": round(base, 1),
            "mimo_at_same_step": mimo_final,
            "mimo_steps_to_reach": _rounded(reached),
            "baseline_steps_to_mimo_final": _rounded(baseline_to_mimo_final),
            "speedup": speedup,
            "speedup_is_lower_bound": known and lower_bound,
            "speedup_is_upper_bound": known and upper_bound,
        }
    return summary


def proxy_classifier_config(config: Config, settings: ConvergenceSettings) -> ProxyClassifierConfig:
    """The project's proxy-FD classifier for this frame size, as `mimo eval` uses it (any clip length).

    Proxy FDs compare only under the same classifier, so its cache key is part of the fingerprint.
    """
    chosen = {"steps": settings.proxy_classifier_steps, "width": settings.proxy_classifier_width}
    return proxy_config(config, **{key: value for key, value in chosen.items() if value is not None})


class ConvergenceEvaluator:
    """Held-out clips, the proxy classifier and the real clips' feature statistics, prepared once.

    Clips, sampling and history features are those of `mimo eval` / `mimo probe` (mimo.evaluate).
    """

    def __init__(self, config: Config, settings: ConvergenceSettings, device: torch.device):
        self.settings = settings
        self.device = device
        self.clips = load_clips(config, max(settings.eval_clips, settings.probe_clips))
        proxy = proxy_classifier_config(config, settings)
        self.classifier = load_proxy_classifier(proxy, device=device, progress=False)
        real = self.clips["video"][: settings.eval_clips]
        self.real_statistics = extract_feature_statistics(real, self.classifier.features, device=device, progress=False)
        self.layer = config.mimo.decoder_layer or config.model.size()[0]

    def __call__(self, model: FrameCausalDiT, config: Config) -> dict[str, float]:
        n, k = self.settings.eval_clips, config.context_frames
        clips = {key: value[:n] for key, value in self.clips.items()}
        samples = generate(model, config, clips, self.settings.seed)
        trajectory = trajectory_error(samples[:, k:], clips["positions"][:, k:], clips["colors"], clips["valid"])
        # eigh: exact for the rank-deficient covariances of a few hundred clips
        fd = proxy_frechet_distance(
            self.real_statistics, samples, self.classifier, device=self.device, method="eigh", progress=False
        )
        probe_clips = self.clips["video"][: self.settings.probe_clips]
        per_frame = history_features(model, probe_clips, config.eval.batch_size)[self.layer]  # (N, T, D)
        labels = self.clips["label"][: self.settings.probe_clips]
        c = DEFAULT_C_GRID if self.settings.probe_c is None else self.settings.probe_c
        probe = linear_probe(per_frame.mean(dim=1), labels, c=c, seed=self.settings.seed)
        return {
            "trajectory_error": round(trajectory.mean_error, 4),
            "trajectory_miss_rate": round(trajectory.miss_rate, 4),
            "proxy_fd": round(fd, 4),
            "probe_accuracy": round(probe.held_out_accuracy, 4),
        }


def _fingerprint(config: Config, settings: ConvergenceSettings) -> str:
    """What the cached evaluations depend on: the config, the benchmark section and the proxy classifier.

    The config enters as its values that differ from the dataclass defaults, so a key added to the config
    later does not orphan a run. Not the output folder, and not train.steps: a larger budget continues
    the same runs.
    """
    defaults = Config().to_dict()
    values = {
        section: {key: value for key, value in entries.items() if value != defaults[section].get(key)}
        for section, entries in config.to_dict().items()
    }
    for key in ("out_dir", "steps"):
        values["train"].pop(key, None)
    classifier = proxy_classifier_config(config, settings).cache_key()
    text = json.dumps(
        {"config": values, "benchmark": dataclasses.asdict(settings), "classifier": classifier}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bench_convergence(args: argparse.Namespace, publish: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Train both arms in chunks of K steps (each a resumable `mimo` run folder), evaluating after each chunk.

    Evaluations are kept in the result JSON: a restarted benchmark skips what is there and resumes each
    run from its last checkpoint. Arms alternate chunk by chunk, so both curves grow together.
    """
    config, settings = load_convergence_config(
        args.config, [*(TINY_CONVERGENCE_OVERRIDES if args.tiny else ()), *args.set]
    )
    if args.tiny:
        settings = dataclasses.replace(settings, **TINY_CONVERGENCE_SETTINGS)
    fingerprint = _fingerprint(config, settings)
    previous_path = args.results_dir / f"{args.result_name}.json"
    evaluations: dict[str, dict[str, dict[str, float]]] = {"baseline": {}, "mimo": {}}
    if previous_path.is_file():
        previous = json.loads(previous_path.read_text())
        if previous["settings"].get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{previous_path} holds evaluations of another configuration; delete it (and its run folders in "
                f"{args.runs_dir}) to start over, or pass --name to keep both"
            )
        evaluations = previous["results"]["evaluations"]
    runs_dir = args.runs_dir / args.result_name
    arms = {"baseline": with_overrides(config, list(BASELINE_OVERRIDES)), "mimo": config}
    depth, width, heads = config.model.size()
    settings_json = {
        "config": str(args.config),
        "fingerprint": fingerprint,
        "runs": str(runs_dir),
        "model": f"{config.model.preset} (depth {depth}, width {width}, heads {heads})",
        "frame_size": config.data.frame_size,
        "patch_size": config.model.patch_size,
        "num_frames": config.data.num_frames,
        "context_frames": config.context_frames,
        "batch_size": config.train.batch_size,
        "steps": config.train.steps,
        "mask_ratio": config.mimo.mask_ratio,
        "mimo_weight": config.mimo.weight,
        "sample_steps": config.sample.steps,
        **dataclasses.asdict(settings),
    }

    def payload() -> dict[str, Any]:
        summary = convergence_summary(evaluations)
        return {"settings": settings_json, "results": {"evaluations": evaluations, "summary": summary}}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where Trainer trains
    evaluate = ConvergenceEvaluator(config, settings, device)
    settings_json["proxy_classifier_accuracy"] = round(evaluate.classifier.validation_accuracy, 4)
    for step in evaluation_steps(config.train.steps, settings.eval_every):
        if all(str(step) in evaluations[arm] for arm in arms):
            continue
        for arm, arm_config in arms.items():
            if str(step) in evaluations[arm]:
                continue
            run_dir = runs_dir / arm
            chunk = with_overrides(arm_config, [f"train.steps={step}", f"train.out_dir={run_dir}"])
            wall, cpu = time.perf_counter(), time.process_time()
            trained = train(chunk)
            train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
            if trained.interrupted:  # SIGINT/SIGTERM: the trainer saved a checkpoint mid-chunk
                print(f"[convergence] interrupted at {arm} step {trained.step}; rerun the same command to resume")
                return payload()
            checkpoint = find_checkpoint(run_dir)
            if checkpoint is None or checkpoint.name != f"step_{step:08d}":
                raise RuntimeError(
                    f"{run_dir} should end at step {step} after training but its latest checkpoint is {checkpoint}: "
                    f"the run is ahead of the evaluations in {previous_path}; delete {run_dir} to train this arm again"
                )
            model, trained_config = load_trained_model(checkpoint, device=str(device))
            started = time.perf_counter()
            metrics = evaluate(model, trained_config)
            evaluations[arm][str(step)] = metrics | {
                "train_wall_s": round(train_wall, 1),
                "train_cpu_s": round(train_cpu, 1),
                "eval_wall_s": round(time.perf_counter() - started, 1),
            }
            print(f"[convergence] {arm} step {step}: " + json.dumps(evaluations[arm][str(step)]), flush=True)
            publish(payload())
            plot_convergence(evaluations, args.results_dir / f"{args.result_name}.png")
    plot_convergence(evaluations, args.results_dir / f"{args.result_name}.png")  # also when nothing was left to do
    return payload()


def _speedup_text(row: dict[str, Any]) -> str:
    bound = "≥ " if row["speedup_is_lower_bound"] else "≤ " if row["speedup_is_upper_bound"] else ""
    return f"{bound}×{row['speedup']}"


def plot_convergence(evaluations: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """One panel per metric, both arms, the baseline's final value dashed and MiMo's crossing marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = convergence_summary(evaluations)
    colors = {"baseline": "tab:blue", "mimo": "tab:orange"}
    fig, axes = plt.subplots(1, len(HIGHER_IS_BETTER), figsize=(5 * len(HIGHER_IS_BETTER), 3.6), dpi=110)
    for ax, metric in zip(axes, HIGHER_IS_BETTER, strict=True):
        for arm, style in (("baseline", "o-"), ("mimo", "s-")):
            points = sorted((int(s), v[metric]) for s, v in evaluations.get(arm, {}).items())
            if points:
                ax.plot(*zip(*points, strict=True), style, label=arm, markersize=3, color=colors[arm])
        if metric in summary:
            ax.axhline(summary[metric]["baseline_final"], color="grey", linestyle="--", linewidth=0.8)
            row = summary[metric]
            for arm, reached in (("baseline", row["baseline_steps_to_reach"]), ("mimo", row["mimo_steps_to_reach"])):
                if reached is not None:
                    ax.axvline(reached, color=colors[arm], linestyle=":", linewidth=0.9)
            if row["baseline_steps_to_mimo_final"] is not None:  # MiMo fell short: where the baseline was as good
                ax.axhline(row["mimo_at_same_step"], color=colors["mimo"], linestyle="--", linewidth=0.8)
                ax.axvline(row["baseline_steps_to_mimo_final"], color=colors["baseline"], linestyle=":", linewidth=0.9)
            speed = "–" if row["speedup"] is None else f"speed-up {_speedup_text(row)}"
            ax.set_title(f"MiMo vs the baseline's final value: {speed}", fontsize=9)
        if metric == "proxy_fd":
            ax.set_yscale("log")  # it falls by orders of magnitude early, then the arms differ by a few units
        ax.set_xlabel("training step")
        ax.set_ylabel(METRIC_LABELS[metric], fontsize=8)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.15, top=0.9, wspace=0.3)  # tight_layout costs ~1 s a call
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----- the results table --------------------------------------------------------------------------
def _machine_line(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    device = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
    shared = (
        f"**shared machine** (the process got {m['cpu_share']:.0%} of its threads' time; load "
        f"{m['load_average_at_start'][0]} → {m['load_average_at_end'][0]})"
        if m.get("shared_machine")
        else f"the process got {m['cpu_share']:.0%} of its threads' time; load {m['load_average_at_start'][0]} → "
        f"{m['load_average_at_end'][0]}"
    )
    return f"_{device}; torch {m['torch']}; {m['date']}; {shared}._"


def _model_line(s: dict[str, Any]) -> str:
    return (
        f"{s['preset']} ({s['depth']} layers, width {s['width']}), {s['frame_size']}×{s['frame_size']} px, "
        f"patch {s['patch_size']}, batch {s['batch_size']}"
    )


def _gflop(flops: float) -> str:
    return f"{flops / 1e9:.1f}"


def _step_section(payload: dict[str, Any]) -> list[str]:
    s, results = payload["settings"], payload["results"]
    lines = [
        f"{_model_line(s)}, {s['num_frames']} frames ({s['context_frames']} given); {s['rounds']} interleaved rounds; "
        "ratios are medians of per-round ratios.",
        "",
        "| arm | tokens / clip | GFLOP / step | median step, wall / CPU (s) | time vs baseline (wall) | (CPU time) "
        "| FLOPs vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratios = (r["wall_ratio_to_baseline"], r["cpu_ratio_to_baseline"], r["flop_ratio_to_baseline"])
        lines.append(
            f"| {name} | {r['tokens_per_clip']} | {_gflop(r['flops_per_step'])} "
            f"| {r['median_wall_s']:.3f} / {r['median_cpu_s']:.3f} | " + " | ".join(f"{x:.3f}" for x in ratios) + " |"
        )
    return lines


def _sampling_section(payload: dict[str, Any]) -> list[str]:
    s, results = payload["settings"], payload["results"]
    lines = [
        f"{_model_line(s)}, untrained weights, {s['ode_steps']} Euler steps per frame, all frames in the cache.",
        "",
        "| frames | cached (frames/s) | uncached (frames/s) | cache speed-up (wall) | (CPU time) |",
        "|---|---|---|---|---|",
    ]
    for frames, r in results["lengths"].items():
        lines.append(
            f"| {frames} | {r['cached_frames_per_s']:.2f} | {r['uncached_frames_per_s']:.2f} "
            f"| ×{r['cached_speedup']} | ×{r['cached_speedup_cpu_time']} |"
        )
    lines += [
        "",
        "Cost of one more frame (seconds per frame added, wall / CPU time):",
        "",
        "| frames added | cached | uncached |",
        "|---|---|---|",
    ]
    for r in results["marginal_cost"]:
        lines.append(
            f"| {r['frames']} | {r['cached_s_per_frame']:.3f} / {r['cached_cpu_s_per_frame']:.3f} "
            f"| {r['uncached_s_per_frame']:.3f} / {r['uncached_cpu_s_per_frame']:.3f} |"
        )
    return lines


def _utilization_rows(results: dict[str, Any], peak: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or "flops_analytic" not in r:
            continue
        by_cpu = f"{r['fraction_of_peak_by_cpu_time']:.1%}" if "fraction_of_peak_by_cpu_time" in r else "–"
        useful_by_cpu = r.get("useful_fraction_of_peak_by_cpu_time")
        useful = f"{r['useful_fraction_of_peak']:.1%}" if "useful_fraction_of_peak" in r else "–"  # older results
        useful += f" ({useful_by_cpu:.1%})" if useful_by_cpu else ""
        mfu = f"{r['mfu_executed']:.1%} / {r['mfu_useful']:.1%}" if "mfu_useful" in r else "–"
        useful_flops = _gflop(r["flops_useful"]) if "flops_useful" in r else "–"
        rows.append(
            f"| {name} | {_gflop(r['flops_analytic'])} | {useful_flops} | "
            f"{r['counted_over_analytic']:.3f} | {r['achieved_gflops']} "
            f"| {peak['gflops']} | {r['fraction_of_peak']:.1%} | {by_cpu} | {useful} | {mfu} | "
            f"{r['memory']['peak_mib']:.0f} (+{r['memory']['peak_above_start_mib']:.0f}) |"
        )
    return rows


def _utilization_section(payload: dict[str, Any]) -> list[str]:
    s, results = payload["settings"], payload["results"]
    header = [
        "| arm | GFLOP / step executed | useful (mask-aware) | counted / analytic | achieved GFLOP/s "
        "| measured peak GFLOP/s | executed of peak (wall) | (CPU time) | useful of peak: wall (CPU time) "
        "| MFU executed / useful (datasheet bf16) | peak memory MiB (+ during step) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = [
        f"{_model_line(s)}, {s['num_frames']} frames, {s['precision']}; peak: {results['peak']['matmul']}.",
        "",
        *header,
        *_utilization_rows(results, results["peak"]),
    ]
    gpu = results.get("gpu_bf16", {})
    if "skipped" in gpu:
        lines += ["", f"GPU bf16 (B, XL): skipped, {gpu['skipped']}."]
    elif gpu:
        lines += ["", f"GPU bf16, peak {gpu['peak']['matmul']}:", "", *header, *_utilization_rows(gpu, gpu["peak"])]
    return lines


def _convergence_section(payload: dict[str, Any], image: str) -> list[str]:
    s, results = payload["settings"], payload["results"]
    done = {arm: len(v) for arm, v in results["evaluations"].items()}
    planned = len(evaluation_steps(s["steps"], s["eval_every"]))
    lines = [
        f"{s['model']}, {s['frame_size']}×{s['frame_size']} px, patch {s['patch_size']}, {s['num_frames']} frames "
        f"({s['context_frames']} given), batch {s['batch_size']}, {s['steps']} steps; MiMo r = {s['mask_ratio']}, "
        f"λ = {s['mimo_weight']}; evaluated every {s['eval_every']} steps on {s['eval_clips']} held-out clips "
        f"({s['sample_steps']} Euler steps), probe on {s['probe_clips']} clips. Evaluations done: "
        + ", ".join(f"{arm} {n}/{planned}" for arm, n in done.items())
        + ".",
        "",
        "Speed-up: steps the baseline needs to reach (and stay at) its own final value over the steps MiMo needs; "
        "a dotted line in the figure marks each arm's crossing. Where MiMo never reaches it, the steps the baseline "
        "needs to reach MiMo's final value over the budget (below 1: MiMo is slower).",
        "",
        "| metric | baseline final (step) | MiMo at that step | baseline steps to reach it | MiMo steps | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for metric, r in convergence_summary(results["evaluations"]).items():
        at_step = "–" if r["mimo_at_same_step"] is None else f"{r['mimo_at_same_step']:.3f}"
        reach = f"{r['mimo_steps_to_reach']:.0f}" if r["mimo_steps_to_reach"] is not None else "not reached"
        if r["baseline_steps_to_mimo_final"] is not None:
            reach += f" (the baseline reached MiMo's final value at step {r['baseline_steps_to_mimo_final']:.0f})"
        speedup = "–" if r["speedup"] is None else _speedup_text(r)
        lines.append(
            f"| {METRIC_LABELS[metric]} | {r['baseline_final']:.3f} ({r['baseline_final_step']}) | {at_step} "
            f"| {r['baseline_steps_to_reach']:.0f} | {reach} | {speedup} |"
        )
    finals = {arm: v[max(v, key=int)] for arm, v in results["evaluations"].items() if v}
    if finals:
        lines += [
            "",
            "Objects lost in the samples at the last evaluation (trajectory miss rate): "
            + ", ".join(f"{arm} {final['trajectory_miss_rate']:.0%}" for arm, final in finals.items())
            + ".",
        ]
    return [*lines, "", f"![convergence curves]({image})"]


def _memory_section(payload: dict[str, Any]) -> list[str]:
    lines = [
        "| config | GPUs | batch per GPU × accumulation | checkpointing | peak per GPU (GB) | activations (GB) "
        "| static (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, row in payload["results"].items():
        gb = row["gb"]
        static = sum(v for k, v in gb.items() if k not in ("activations", "transient"))
        lines.append(
            f"| {path} | {row['world_size']} ({row['parallel']}) | {row['batch_size']} × {row['grad_accumulation']} | "
            f"{row['activation_checkpointing']} | {row['peak_gb']} | {gb['activations']} | {static:.2f} |"
        )
    return lines


SECTIONS = {
    "step": "Training step: MiMo against the CTF baseline",
    "sampling": "Sampling: KV cache against recomputing the history",
    "utilization": "Utilisation: achieved FLOP/s against this machine's matmul peak",
    "convergence": "Convergence on the built-in videos",
    "memory": "Memory census of a training step per GPU (fake tensors, not a measurement)",
}


def summary_table(results_dir: Path) -> str:
    """The Markdown of every benchmark JSON in `results_dir` (the README the project's README copies from)."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `mimo bench NAME` (`src/mimo/bench.py`) from the JSON files in this folder; regenerated on "
        "every run. Ratios compare arms measured in the same process, interleaved round by round.",
    ]
    for path in sorted(results_dir.glob("*.json")):
        payload = json.loads(path.read_text())
        kind = payload.get("benchmark") if isinstance(payload, dict) else None
        if kind not in SECTIONS:
            continue
        lines += ["", f"## {SECTIONS[kind]} (`{path.name}`)", "", _machine_line(payload), ""]
        if kind == "convergence":
            lines += _convergence_section(payload, path.with_suffix(".png").name)
        else:
            sections = {"step": _step_section, "sampling": _sampling_section, "utilization": _utilization_section}
            lines += (sections | {"memory": _memory_section})[kind](payload)
    return "\n".join(lines) + "\n"


# ----- entry points -------------------------------------------------------------------------------
BENCHMARKS: dict[str, Callable[[argparse.Namespace, Callable[[dict[str, Any]], Any]], dict[str, Any]]] = {
    "step": lambda args, publish: bench_step(args),
    "sampling": lambda args, publish: bench_sampling(args),
    "utilization": lambda args, publish: bench_utilization(args),
    "convergence": bench_convergence,
    "memory": lambda args, publish: bench_memory(args),
}
# --tiny: seconds-long runs for the smoke tests; their figures mean nothing.
TINY: dict[str, dict[str, Any]] = {
    "step": {"preset": "micro", "frame_size": 16, "frames": 4, "batch_size": 2, "rounds": 2, "warmup": 1},
    "sampling": {"preset": "micro", "frame_size": 16, "lengths": [2, 4], "batch_size": 1, "steps": 2},
    "utilization": {
        "preset": "micro",
        "frame_size": 16,
        "frames": 4,
        "batch_size": 2,
        "steps": 1,
        "matmul_size": 128,
        "peak_repeats": 2,
    },
}
TINY_CONVERGENCE_OVERRIDES = (
    "model.preset=micro",
    "model.depth=null",
    "model.width=null",
    "model.heads=null",
    "mimo.decoder_layer=null",
    "data.frame_size=16",
    "model.patch_size=4",
    "data.num_frames=4",
    "train.batch_size=2",
    "train.steps=4",
    "train.log_every=1",
    "sample.steps=2",
)
TINY_CONVERGENCE_SETTINGS = {
    "eval_every": 2,
    "eval_clips": 4,
    "probe_clips": 20,
    "proxy_classifier_steps": 2,
    "proxy_classifier_width": 8,
    "probe_c": 0.1,
}


def build_parser(name: str) -> argparse.ArgumentParser:
    """The command-line arguments of benchmark `name` (`mimo bench NAME --help`)."""
    parser = argparse.ArgumentParser(prog=f"mimo bench {name}", description=SECTIONS[name])
    if name == "memory":
        parser.add_argument("configs", type=Path, nargs="+", help="training configs (YAML)")
        parser.add_argument("--gpus", type=int, default=None, help="ranks (default: 8 for FSDP presets, else 1)")
        parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    elif name == "convergence":
        parser.add_argument("--config", type=Path, default=CONVERGENCE_CPU_CONFIG, help="the MiMo arm's config")
        parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
        parser.add_argument("--name", default=None, help="result name (default: the config's file name)")
        parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "bench", help="arms' run folders")
    else:
        parser.add_argument("--config", type=Path, default=None, help="YAML the model settings start from")
        parser.add_argument("--preset", default="tiny", help="model size (config.PRESETS)")
        parser.add_argument("--frame-size", type=int, default=32)
        parser.add_argument("--patch-size", type=int, default=4)
        parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    if name in ("step", "utilization"):
        parser.add_argument("--frames", type=int, default=8, help="clip length T")
        parser.add_argument("--batch-size", type=int, default=8)
    if name == "step":
        parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="MiMo mask ratios")
        parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of one step per arm")
        parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    if name == "sampling":
        parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32], help="frames generated")
        parser.add_argument("--batch-size", type=int, default=1)
        parser.add_argument("--steps", type=int, default=8, help="Euler steps per frame")
        parser.add_argument("--rounds", type=int, default=1)
    if name == "utilization":
        parser.add_argument("--ratio", type=float, default=0.5, help="MiMo mask ratio")
        parser.add_argument("--steps", type=int, default=3, help="timed steps per arm")
        parser.add_argument("--matmul-size", type=int, default=None, help="side of the peak matmul")
        parser.add_argument("--peak-repeats", type=int, default=5)
        parser.add_argument("--gpu-presets", nargs="+", default=["B", "XL"])
        parser.add_argument("--gpu-frame-size", type=int, default=32, help="a 256 px video's latent side")
        parser.add_argument("--gpu-patch-size", type=int, default=2, help="DiT-B/2, DiT-XL/2")
        parser.add_argument("--gpu-frames", type=int, default=16)
        parser.add_argument("--gpu-batch-size", type=int, default=2, help="XL at 7.4k tokens per clip: ~60 GB")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests), not a measurement")
    return parser


def _result_name(name: str, args: argparse.Namespace) -> str:
    base = (args.name or Path(args.config).stem) if name == "convergence" else name
    if name == "memory":
        base = "memory-" + "-".join(path.stem for path in args.configs) if len(args.configs) == 1 else name
    return f"{base}-tiny" if args.tiny else base


def run_benchmark(name: str, args: Sequence[str] | None = None) -> dict[str, Any]:
    """Run benchmark `name` with command-line `args`; writes RESULTS/NAME.json and the README table, returns the JSON.

    `name` is one of step, sampling, utilization, convergence; `args` as `mimo bench NAME --help` lists them.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark '{name}'; choose one of {', '.join(BENCHMARKS)}")
    options = build_parser(name).parse_args(list(args or []))
    if options.tiny:
        vars(options).update(TINY.get(name, {}))
    if options.threads:
        torch.set_num_threads(options.threads)
    options.results_dir = options.out or default_results_dir()
    options.result_name = _result_name(name, options)
    machine = machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    share = CpuShare()

    def publish(payload: dict[str, Any]) -> dict[str, Any]:
        full = {"benchmark": name, "machine": machine | share.report(), **payload}
        write_result(options.result_name, full, options.results_dir)
        return full

    return publish(BENCHMARKS[name](options, publish))


def main(name: str, argv: Sequence[str] | None = None) -> None:
    """Script entry (`python benchmarks/bench_NAME.py ...`): run, then print the JSON."""
    import sys

    payload = run_benchmark(name, sys.argv[1:] if argv is None else argv)
    print(json.dumps(payload, indent=1))
