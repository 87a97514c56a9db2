"""What the benchmark scripts share: the machine, timing, the arms' set-up, the results folder and its table.

Each `bench_NAME.py` beside this file is a script that measures one thing (`python benchmarks/bench_NAME.py`,
or `mimo bench NAME` from a checkout): it declares its arguments (`add_arguments`), what `--tiny` shrinks
(`TINY`) and how it measures (`measure`). `run_benchmark(name, args)` runs one: it writes `results/NAME.json`
with the machine it ran on (CPU model, cores, threads, torch, date, load) and regenerates `results/README.md`,
a table of all results found there. Arms that are compared run in one process, interleaved round by round,
so a ratio never mixes two runs. On a shared machine wall time depends on the neighbours, so CPU time is
recorded beside it and each result says which share of its threads' CPU time it actually got.

    step         MiMo at r = 0.25 / 0.5 / 0.75 against the CTF baseline: same model, same batch
    sampling     KV-cached against uncached generation at 8 / 16 / 32 frames, and the cost of one more frame
    utilization  FLOPs of a step (the model's count, cross-checked by FlopCounterMode) against a measured matmul peak
    convergence  baseline and MiMo trained on the built-in videos, evaluated every K steps, speed-up factor
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import sys
import time
import unittest.mock
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.attention.flex_attention as flex_module

from mimo.config import Config, load_config, with_overrides
from mimo.data import build_dataset, stack_clips
from mimo.data.atomic import write_atomically
from mimo.evaluation.metrics import METRICS
from mimo.train.distributed import default_device
from mimo.train.logger import read_metrics
from mimo.train.trainer import Trainer

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent  # benchmarks are scripts of a checkout, never installed
BASELINE_OVERRIDES = ("mimo.weight=0", "mimo.mask_ratio=0")  # the CTF baseline ("ACDiT" in the paper)
GENERATED = "<!-- The tables below are rewritten by benchmarks/harness.py on every run; edit above this line. -->"
SHARED_CPU_SHARE = 0.9  # a benchmark that got less CPU than this share of its threads' time ran on a shared machine


# ----- the machine and the results folder ---------------------------------------------------------
def default_results_dir() -> Path:
    """`runs/bench-results/` of the checkout: untracked, so a run never rewrites the published results;
    publish with `--out benchmarks/results`."""
    return REPO_ROOT / "runs" / "bench-results"


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


def training_wall_seconds(run: Path) -> float:
    """Wall seconds of the run's training steps: each logged interval's steps over its clips per second, summed,
    so a run resumed in several sessions counts no pause between them (one process; the first interval after
    a resume is counted from the last logged step, over by at most one logging interval)."""
    train = load_config(run / "config.yaml").train
    clips_per_step, seconds, previous = train.batch_size * train.grad_accumulation, 0.0, 0
    for record in read_metrics(run):
        if "clips_per_second" in record:
            seconds += (record["step"] - previous) * clips_per_step / record["clips_per_second"]
            previous = record["step"]
    return round(seconds, 1)


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
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(payload, indent=1) + "\n"))
    refresh_readme(results_dir)
    return path


def refresh_readme(results_dir: Path) -> Path:
    """Rewrite the tables of `results_dir/README.md`; what is written above GENERATED (measurements described
    in prose, with their dates) is kept."""
    path = results_dir / "README.md"
    text = path.read_text() if path.is_file() else ""
    notes = text.split(GENERATED)[0] if GENERATED in text else "# Benchmark results\n\n"
    write_atomically(
        path, lambda temporary: temporary.write_text(notes + GENERATED + "\n\n" + summary_table(results_dir))
    )
    return path


# ----- FlexAttention's backward on a CPU ---------------------------------------------------------
def _any_device(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """Stands in for torch's device guard of FlexAttention: accepts every device."""


def flex_backward_on_cpu() -> contextlib.AbstractContextManager:
    """While inside, torch's one guard against FlexAttention's backward on a CPU (`_validate_device`) is lifted:
    eager FlexAttention then runs its reference math forward and backward there, so the block-sparse path a
    GPU trains with runs, end to end, on a CPU (what it computes is checked; its speed means nothing). For
    tests and benchmarks only: nothing in src/ lifts the guard, so a CPU user meets the clear refusal."""
    return unittest.mock.patch.object(flex_module, "_validate_device", _any_device)


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


def cpu_seconds_per_thread(cpu_seconds: float) -> float:
    """Process CPU time spread over torch's threads: the wall time the work would take on idle cores."""
    return max(cpu_seconds / torch.get_num_threads(), 1e-9)


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """Median over rounds of time / reference time in the same round: neighbours' load cancels within a round."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


# ----- shared set-up ------------------------------------------------------------------------------
def model_overrides(args: argparse.Namespace) -> list[str]:
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
    clips = stack_clips(dataset, batch_size)
    return {key: clips[key] for key in ("video", "label")}


def arm_trainer(config: Config, overrides: Sequence[str], run_dir: Path) -> Trainer:
    """A Trainer for one arm; every arm seeds its weights with train.seed, so all start from the same backbone."""
    return Trainer(with_overrides(config, [*overrides, f"train.out_dir={run_dir}", "train.tensorboard=false"]))


def arm_overrides(ratios: Sequence[float]) -> dict[str, list[str]]:
    arms = {"baseline": list(BASELINE_OVERRIDES)}
    arms.update({f"mimo_r{r:g}": [f"mimo.mask_ratio={r}"] for r in ratios})
    return arms


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def rounded_median(values: Sequence[float], digits: int = 4) -> float:
    return round(statistics.median(values), digits)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-size arguments of every benchmark but convergence (see `model_overrides`)."""
    parser.add_argument("--config", type=Path, default=None, help="YAML the model settings start from")
    parser.add_argument("--preset", default="tiny", help="model size (config.PRESETS)")
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")


def repeat_batch(batch: dict[str, torch.Tensor], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The same batch forever, moved to the device once (outside any timing)."""
    on_device = {k: v.to(device) for k, v in batch.items()}
    while True:
        yield on_device


def step_of(trainer: Trainer, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """One real optimiser step of `trainer` (loss, backward, clipping, AdamW, EMA) on `batch`."""
    batches = repeat_batch(batch, trainer.device)
    return lambda: trainer.train_step(batches)


def settings_of(args: argparse.Namespace, config: Config, device: torch.device, **extra: Any) -> dict[str, Any]:
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


# ----- convergence: the speed-up of MiMo over the baseline -------------------------------------
PROBE = "probe_accuracy"  # of the history features: measured on the model, not on its samples
PROBE_LABEL = "probe accuracy of history features (higher is better)"


def summarised(evaluation: dict[str, float]) -> list[str]:
    """The metrics of an evaluation that have a direction: the registry's, and the probe."""
    return [name for name in evaluation if name in METRICS or name == PROBE]


def higher_is_better(metric: str) -> bool:
    return metric == PROBE or METRICS[metric].higher_is_better


def metric_label(metric: str) -> str:
    return PROBE_LABEL if metric == PROBE else METRICS[metric].label


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
    for metric in summarised(baseline[final_step]):
        higher = higher_is_better(metric)
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


def speedup_text(row: dict[str, Any]) -> str:
    bound = "≥ " if row["speedup_is_lower_bound"] else "≤ " if row["speedup_is_upper_bound"] else ""
    return f"{bound}×{row['speedup']}"


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
        speedup = "–" if r["speedup"] is None else speedup_text(r)
        lines.append(
            f"| {metric_label(metric)} | {r['baseline_final']:.3f} ({r['baseline_final_step']}) | {at_step} "
            f"| {r['baseline_steps_to_reach']:.0f} | {reach} | {speedup} |"
        )
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
        "Written by `mimo bench NAME` (`benchmarks/harness.py`) from the JSON files in this folder; regenerated on "
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
            sections = {
                "step": _step_section,
                "sampling": _sampling_section,
                "utilization": _utilization_section,
                "memory": _memory_section,
            }
            lines += sections[kind](payload)
    return "\n".join(lines) + "\n"


# ----- entry points -------------------------------------------------------------------------------
def build_parser(name: str, script: ModuleType) -> argparse.ArgumentParser:
    """The command-line arguments of benchmark `name` (`mimo bench NAME --help`): its own and the common ones."""
    parser = argparse.ArgumentParser(prog=f"mimo bench {name}", description=SECTIONS[name])
    script.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: runs/bench-results; published: benchmarks/results)",
    )
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests), not a measurement")
    return parser


def run_benchmark(name: str, args: Sequence[str] | None = None) -> dict[str, Any]:
    """Run benchmark `name` (the script bench_NAME.py beside this file) with command-line `args`; writes
    RESULTS/NAME.json and the README table, returns the JSON. `args` as `mimo bench NAME --help` lists them."""
    if name not in SECTIONS:
        raise ValueError(f"unknown benchmark '{name}'; choose one of {', '.join(SECTIONS)}")
    script = importlib.import_module(f"bench_{name}")
    options = build_parser(name, script).parse_args(list(args or []))
    if options.tiny:  # seconds-long runs for the smoke tests; their figures mean nothing
        vars(options).update(getattr(script, "TINY", {}))
    if options.threads:
        torch.set_num_threads(options.threads)
    options.results_dir = options.out or default_results_dir()
    base = script.result_name(options) if hasattr(script, "result_name") else name
    options.result_name = f"{base}-tiny" if options.tiny else base
    machine = machine_info(torch.device(default_device()))
    share = CpuShare()

    def publish(payload: dict[str, Any]) -> dict[str, Any]:
        full = {"benchmark": name, "machine": machine | share.report(), **payload}
        write_result(options.result_name, full, options.results_dir)
        return full

    payload = publish(script.measure(options, publish))
    print(f"wrote {options.results_dir / options.result_name}.json and {options.results_dir / 'README.md'}")
    return payload


def main(name: str) -> None:
    """Script entry (`python benchmarks/bench_NAME.py ...`): run, then print the JSON."""
    print(json.dumps(run_benchmark(name, sys.argv[1:]), indent=1))
