"""Does MiMo help when masking keeps the content? Arms × seeds, same steps, clips and noise; paired tests.

    nohup python benchmarks/mimo_study.py --workers 2 --sample-every 2 --robustness \
        > benchmarks/results/mimo_study.log 2>&1 &
    python benchmarks/mimo_study.py --sample-every 2 --robustness --report-only   # report what has run so far
    python benchmarks/mimo_study.py --from-results   # rebuild the report from the published JSON alone
    # the 8-layer comparison: --arms baseline mimo-r0.5 --tail-fraction 0 --set model.depth=8 \
    #     --name mimo_study_depth8 --runs runs/study-depth8
    # the target ablation, beside the study's runs: --arms baseline mimo-r0.5 mimo-r0.5-current mimo-r0.5-next \
    #     --tail-fraction 0 --sample-every 4 --name mimo_study_targets

Arms (configs/study/cpu.yaml is the MiMo r = 0.5 arm; the others are overrides of it):
baseline (λ = 0, r = 0), masking only (λ = 0, r = 0.5), MiMo r = 0.25 and r = 0.5 (λ = 0.5), and MiMo
r = 0.5 with the unmasked fine-tuning tail (its last `--tail-fraction` of steps with r = 0, λ = 0). Every
arm trains the same number of steps from the same initial weights (train.seed) on the same clips in
the same order (data.seed), with the same noise levels and noise per step; seeds change all three.
The tail arm is the r = 0.5 run up to the tail's first step (the runs are identical there: training is
deterministic per step), so it starts from a copy of that checkpoint and trains only the tail.

At every evaluation (the EMA weights of a checkpoint): held-out velocity error with the full history
at fixed noise levels (same clips and noise for every arm, per clip, for paired tests) and the linear
probe (several split seeds) and CKNNA (against the proxy video classifier) of the history features at
every layer; at every `--sample-every`-th evaluation and the last, also the autoregressive and
teacher-forced trajectory error (per clip) and the proxy Fréchet distance of the autoregressive
samples. With `--robustness`, the final model's velocity error under perturbed histories
(mimo.evaluation.robustness). Each (arm, seed) is one resumable job: a run folder with its
checkpoints and a study.json of its evaluations; rerunning the command skips what is done. The report
(benchmarks/results/mimo_study.{json,md,png}) gives mean ± std over seeds, paired differences against
the baseline (study_statistics: a t-test over seeds, Holm-adjusted over the table, and each seed's own
test over clips with its direction) and the speed-up factor per seed. Its JSON holds every per-seed
number a p-value is computed from; benchmarks/recompute_pvalues.py recomputes them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness import machine_info, steps_to_reach
from mimo.config import Config, load_config, with_overrides
from mimo.data.synthetic import MovingShapes, shape_coverage, trajectories
from mimo.evaluation.metrics import proxy_config
from mimo.evaluation.protocols import autoregressive, copy_last_frame, history_features, load_clips, teacher_forced
from mimo.evaluation.robustness import PERTURBATIONS, velocity_error_curves
from mimo.evaluation.velocity import NOISE_LEVELS, velocity_error
from mimo.metrics.depthwise import DEFAULT_PROBE_SEEDS, depthwise_scores
from mimo.metrics.fvd import extract_feature_statistics
from mimo.metrics.proxy_classifier import load_proxy_classifier, proxy_frechet_distance
from mimo.metrics.trajectory import trajectory_error
from mimo.objectives.masking import tube_mask
from mimo.train.checkpoint import CHECKPOINT_DIR, load_trained_model, naming_the_checkpoint
from mimo.train.trainer import train
from study_statistics import holm, mean_std, paired_over_seeds, within_seed

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "study" / "cpu.yaml"
RESULTS = ROOT / "benchmarks" / "results"
ARMS: dict[str, list[str]] = {
    "baseline": ["mimo.weight=0", "mimo.mask_ratio=0"],
    "masking-only": ["mimo.weight=0", "mimo.mask_ratio=0.5"],
    "mimo-r0.25": ["mimo.weight=0.5", "mimo.mask_ratio=0.25"],
    "mimo-r0.5": ["mimo.weight=0.5", "mimo.mask_ratio=0.5"],
}
# the paper's target ablation (its current+next is mimo-r0.5): only when named with --arms
TARGET_ARMS: dict[str, list[str]] = {
    f"mimo-r0.5-{target}": ["mimo.weight=0.5", "mimo.mask_ratio=0.5", f"mimo.targets={target}"]
    for target in ("current", "next")
}
TAIL_ARM, TAIL_SOURCE = "mimo-r0.5-tail", "mimo-r0.5"
# the weakest non-zero and the strongest of mimo.evaluation.robustness.PERTURBATIONS, to keep it cheap
ROBUSTNESS_STRENGTHS = {kind: (0.0, strengths[1], strengths[-1]) for kind, strengths in PERTURBATIONS.items()}
OBJECT_PIXEL_COVERAGE = 0.5  # a pixel belongs to an object when the object covers at least half of it


@dataclass(frozen=True)
class Sizes:
    """Held-out clips per evaluation, sized so that one evaluation costs ~30 s of one core."""

    velocity_clips: int = 128
    trajectory_clips: int = 32
    probe_clips: int = 192
    probe_seeds: tuple[int, ...] = DEFAULT_PROBE_SEEDS
    robustness_clips: int = 48
    probe_c: float = 1.0  # one inverse L2 strength: sweeping C (mimo.metrics.probe) costs 5x per evaluation


@dataclass(frozen=True)
class Job:
    arm: str
    seed: int
    config: Config
    eval_steps: tuple[int, ...]
    run_dir: Path
    sizes: Sizes
    start_from: Path | None = None  # the tail arm: the r = 0.5 run's checkpoint at the tail's first step
    sampled_steps: tuple[int, ...] = ()  # evaluations that also sample (trajectories, proxy FD); the others do not
    robustness: bool = False  # then also the velocity error of the final model under perturbed histories


# ----- what masking hides ------------------------------------------------------------------------
def hidden_object_fractions(
    frame_size: int, patch_size: int, ratio: float, num_frames: int, context: int, clips: int = 2000
) -> dict[str, float]:
    """Share of objects a tube mask of ratio r hides completely: in both context frames, in every history
    frame, and in the frame right before a generated one (one random mask per clip)."""
    grid = frame_size // patch_size
    dataset = MovingShapes(clips, frame_size, num_frames, seed=777, max_objects=3)
    masks = tube_mask(clips, grid * grid, ratio, torch.Generator().manual_seed(0)).dropped.numpy()
    pixel_grid = np.arange(frame_size, dtype=np.float32) + 0.5
    in_context = in_history = before_generated = total = 0
    for index in range(clips):
        params = dataset.params(index)
        centres = trajectories(params, num_frames, frame_size)
        dropped = masks[index].reshape(grid, grid)
        for k in range(centres.shape[1]):
            dx = pixel_grid[None, None, :] - centres[:, k, 0, None, None]
            dy = pixel_grid[None, :, None] - centres[:, k, 1, None, None]
            covered = shape_coverage(params.kind, dx, dy, float(params.radius[k])) >= OBJECT_PIXEL_COVERAGE
            patches = covered.reshape(num_frames, grid, patch_size, grid, patch_size).any(axis=(2, 4))
            hidden = ~(patches & ~dropped).any(axis=(1, 2))  # (T,): no visible patch holds the object
            in_context += bool(hidden[:context].all())
            in_history += bool(hidden[: num_frames - 1].all())
            before_generated += float(hidden[context - 1 : num_frames - 1].mean())
            total += 1
    return {
        "hidden_in_all_context_frames": round(in_context / total, 4),
        "hidden_in_whole_history": round(in_history / total, 4),
        "hidden_in_frame_before_a_generated_one": round(before_generated / total, 4),
        "objects": total,
    }


# ----- evaluation ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _evaluation_data(config: Config, sizes: Sizes) -> dict[str, Any]:
    """Held-out clips, the proxy classifier and its features of the real clips: once per process."""
    count = max(sizes.velocity_clips, sizes.trajectory_clips, sizes.probe_clips)
    clips = load_clips(config, count)
    classifier = load_proxy_classifier(proxy_config(config), progress=False)
    real = clips["video"][: sizes.trajectory_clips]
    with torch.no_grad():
        reference = torch.cat([classifier.features(c) for c in clips["video"][: sizes.probe_clips].split(32)])
    return {
        "clips": clips,
        "classifier": classifier,
        "real_statistics": extract_feature_statistics(real, classifier.features, progress=False),
        "reference": reference,
    }


def per_clip_trajectory(videos: torch.Tensor, clips: dict[str, torch.Tensor], k: int) -> list[float]:
    """Trajectory error (px) of each clip's generated frames."""
    return [
        round(
            trajectory_error(
                videos[i : i + 1, k:],
                clips["positions"][i : i + 1, k:],
                clips["colors"][i : i + 1],
                clips["valid"][i : i + 1],
            ).mean_error,
            4,
        )
        for i in range(videos.shape[0])
    ]


def evaluate_checkpoint(checkpoint: Path, config: Config, sizes: Sizes, sampled: bool = True) -> dict[str, Any]:
    """Every metric of one checkpoint; `sampled=False` skips the sampled ones (trajectories, proxy FD)."""
    data = _evaluation_data(config, sizes)
    model, config = load_trained_model(checkpoint)
    k, clips = config.context_frames, data["clips"]
    started = time.perf_counter()
    velocity = velocity_error(model, clips["video"][: sizes.velocity_clips], k, NOISE_LEVELS, seed=0)
    features = history_features(model, clips["video"][: sizes.probe_clips])
    clip_features = {layer: f.mean(dim=1) for layer, f in features.items()}
    labels = clips["label"][: sizes.probe_clips]
    layers = depthwise_scores(clip_features, labels, sizes.probe_seeds, sizes.probe_c, data["reference"])
    scores = {
        "velocity_error": {str(s): round(float(v.mean()), 6) for s, v in zip(NOISE_LEVELS, velocity, strict=True)},
        "velocity_error_per_clip": [[round(float(x), 6) for x in row] for row in velocity],
        "probe_per_layer": {str(layer): [round(a, 4) for a in s.accuracies] for layer, s in layers.items()},
        "cknna_per_layer": {str(layer): round(s.cknna, 4) for layer, s in layers.items()},
    }
    if sampled:
        shown = {key: value[: sizes.trajectory_clips] for key, value in clips.items()}
        with naming_the_checkpoint(checkpoint):
            samples, _ = autoregressive(model, config, shown, config.data.num_frames, progress=False)
            forced = teacher_forced(model, config, shown["video"])
        fd = proxy_frechet_distance(data["real_statistics"], samples, data["classifier"], method="eigh", progress=False)
        autoregressive_errors = per_clip_trajectory(samples, shown, k)
        forced_errors = per_clip_trajectory(forced, shown, k)
        scores |= {
            "trajectory_error": round(statistics.fmean(autoregressive_errors), 4),
            "teacher_forced_trajectory_error": round(statistics.fmean(forced_errors), 4),
            "trajectory_error_per_clip": autoregressive_errors,
            "teacher_forced_trajectory_error_per_clip": forced_errors,
            "proxy_fd": round(fd, 4),
        }
    return scores | {"eval_wall_s": round(time.perf_counter() - started, 1)}


# ----- jobs ----------------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, values: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(values))
    partial.replace(path)


def _checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{step:08d}"


def run_job(job: Job) -> Path:
    """Train one (arm, seed) to the end and evaluate its checkpoints; resumable at every stage."""
    torch.set_num_threads(1)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    out = job.run_dir / "study.json"
    record = _read(out) or {"arm": job.arm, "seed": job.seed, "evaluations": {}}
    todo = [step for step in job.eval_steps if str(step) not in record["evaluations"]]
    bar = tqdm(
        total=len(job.eval_steps) + 1, initial=len(job.eval_steps) - len(todo), desc=f"{job.arm} seed {job.seed}"
    )
    if todo:
        if job.start_from is not None and not (job.run_dir / CHECKPOINT_DIR).is_dir():
            while not (job.start_from / "state.json").is_file():  # the source run may still be training
                time.sleep(30)
            shutil.copytree(job.start_from, job.run_dir / CHECKPOINT_DIR / job.start_from.name)
        started = time.perf_counter()
        result = train(job.config)
        if result.interrupted:
            raise SystemExit(f"{job.arm} seed {job.seed} interrupted at step {result.step}; rerun to resume")
        record.setdefault("train_wall_s", round(time.perf_counter() - started, 1))
    bar.update(1)
    for step in todo:
        sampled = step in job.sampled_steps
        record["evaluations"][str(step)] = evaluate_checkpoint(
            _checkpoint(job.run_dir, step), job.config, job.sizes, sampled
        )
        _write(out, record)
        bar.update(1)
    if job.robustness:
        run_robustness(job)
    bar.close()
    _write(out, record)
    return out


def build_jobs(args: argparse.Namespace) -> list[Job]:
    base = load_config(args.config, [f"train.steps={args.steps}", *args.set])
    every = args.steps // args.evaluations
    eval_steps = tuple(range(every, args.steps + 1, every))
    tail = round(args.steps * args.tail_fraction)
    if args.steps - tail not in eval_steps:
        raise SystemExit(f"the tail's first step {args.steps - tail} must be an evaluation step {eval_steps}")
    sizes = Sizes()
    sampled = tuple(sorted({*eval_steps[args.sample_every - 1 :: args.sample_every], args.steps}))
    jobs: list[Job] = []
    for seed in args.seeds:
        for arm, overrides in ((arm, (ARMS | TARGET_ARMS)[arm]) for arm in args.arms):
            run_dir = args.runs / f"{arm}-seed{seed}"
            config = with_overrides(
                base,
                [
                    *overrides,
                    f"train.seed={seed}",
                    f"data.seed={seed}",
                    f"train.out_dir={run_dir}",
                    f"train.checkpoint_every={every}",
                    f"train.keep_checkpoints={len(eval_steps) + 1}",
                ],
            )
            jobs.append(Job(arm, seed, config, eval_steps, run_dir, sizes, None, sampled, args.robustness))
    for seed in args.seeds if tail and TAIL_SOURCE in args.arms else ():
        source = next(job for job in jobs if job.arm == TAIL_SOURCE and job.seed == seed)
        run_dir = args.runs / f"{TAIL_ARM}-seed{seed}"
        config = with_overrides(source.config, [f"mimo.unmasked_tail_steps={tail}", f"train.out_dir={run_dir}"])
        tail_steps = tuple(step for step in eval_steps if step > args.steps - tail)
        jobs.append(
            Job(
                TAIL_ARM,
                seed,
                config,
                tail_steps,
                run_dir,
                sizes,
                _checkpoint(source.run_dir, args.steps - tail),
                sampled,
                args.robustness,
            )
        )
    return jobs


# ----- robustness of the final models --------------------------------------------------------------
def run_robustness(job: Job) -> Path | None:
    """Velocity error under a perturbed history for the job's final checkpoint (cached in robustness.json)."""
    torch.set_num_threads(1)
    out = job.run_dir / "robustness.json"
    final = _checkpoint(job.run_dir, job.eval_steps[-1])
    if out.is_file() or not (final / "state.json").is_file():
        return out if out.is_file() else None
    model, config = load_trained_model(final)
    video = _evaluation_data(job.config, job.sizes)["clips"]["video"][: job.sizes.robustness_clips]
    started = time.perf_counter()
    curves = velocity_error_curves(model, config, video, ROBUSTNESS_STRENGTHS)
    _write(out, {"curves": curves, "wall_s": round(time.perf_counter() - started, 1)})
    return out


# ----- the report ----------------------------------------------------------------------------------
HIGHER_IS_BETTER = {
    "velocity_error": False,
    "teacher_forced_trajectory_error": False,
    "trajectory_error": False,
    "proxy_fd": False,
    "probe_last_layer": True,
    "probe_best_layer": True,
}
LABELS = {
    "velocity_error": "held-out velocity error, full history (mean of s = 0.5, 0.75, 0.9)",
    "teacher_forced_trajectory_error": "teacher-forced trajectory error (px)",
    "trajectory_error": "autoregressive trajectory error (px)",
    "proxy_fd": "proxy Fréchet distance",
    "probe_last_layer": "probe accuracy, last layer",
    "probe_best_layer": "probe accuracy, best layer",
}
PER_CLIP = {
    "velocity_error": "velocity_error_per_clip",
    "teacher_forced_trajectory_error": "teacher_forced_trajectory_error_per_clip",
    "trajectory_error": "trajectory_error_per_clip",
}
COLORS = {"baseline": "tab:blue", "masking-only": "tab:grey", "mimo-r0.25": "tab:green", "mimo-r0.5": "tab:orange"}
COLORS[TAIL_ARM] = "tab:red"
NOT_MEASURED = "n/a"


def scalar_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """The summary numbers of one evaluation; probe accuracies averaged over the probe's split seeds."""
    probe = {int(layer): statistics.fmean(values) for layer, values in evaluation["probe_per_layer"].items()}
    sampled = [key for key in ("teacher_forced_trajectory_error", "trajectory_error", "proxy_fd") if key in evaluation]
    return {
        "velocity_error": statistics.fmean(evaluation["velocity_error"].values()),
        **{key: evaluation[key] for key in sampled},
        "probe_last_layer": probe[max(probe)],
        "probe_best_layer": max(probe.values()),
    }


def per_clip(evaluation: dict[str, Any], metric: str) -> np.ndarray:
    values = np.asarray(evaluation[PER_CLIP[metric]], dtype=np.float64)
    return values.mean(axis=0) if metric == "velocity_error" else values  # velocity: mean over noise levels


def collect(jobs: list[Job]) -> dict[str, dict[int, dict[int, dict[str, Any]]]]:
    """{arm: {seed: {step: evaluation}}}; the tail arm's steps before its tail are the r = 0.5 run's."""
    runs: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for job in jobs:
        evaluations = _read(job.run_dir / "study.json").get("evaluations")
        if evaluations:
            runs.setdefault(job.arm, {})[job.seed] = {int(s): e for s, e in evaluations.items()}
    for seed, evaluations in runs.get(TAIL_ARM, {}).items():
        tail_start = min(evaluations, default=None)
        shared = runs.get(TAIL_SOURCE, {}).get(seed, {})
        if tail_start is not None:
            evaluations.update({step: e for step, e in shared.items() if step < tail_start})
    return runs


def speedup(
    steps: list[int], baseline: list[float], arm: list[float], higher_is_better: bool
) -> tuple[float | None, str]:
    """How much faster the arm reaches its quality than the baseline, at the same budget (the last step).

    Arm worse than the baseline's final value: the steps the baseline needs to reach the arm's final value
    over the budget (below 1). Arm better: the budget over the steps the arm needs to reach the baseline's
    final value (above 1). Both use the reach-and-stay rule of mimo.bench.steps_to_reach; a crossing at
    the first evaluation is only a bound. Fewer than two shared evaluations measure no speed: (None, "n/a").
    """
    if len(steps) < 2:
        return None, NOT_MEASURED
    budget = steps[-1]
    better = arm[-1] > baseline[-1] if higher_is_better else arm[-1] < baseline[-1]
    if better:
        reached = steps_to_reach(steps, arm, baseline[-1], higher_is_better)
        return budget / reached, "≥" if reached == steps[0] else ""
    reached = steps_to_reach(steps, baseline, arm[-1], higher_is_better)
    return reached / budget, "≤" if reached == steps[0] else ""


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}g} ± {std:.2g}"


def _p(value: float) -> str:
    """A p-value as the reports print it (benchmarks/recompute_pvalues.py reads it back as `p = ...`)."""
    return "–" if math.isnan(value) else f"p = {value:.2g}"


def _speedup_cell(factors: dict[str, Any]) -> tuple[str, str]:
    per_seed = ", ".join(
        NOT_MEASURED if x is None else f"{b}×{x:.2f}"
        for x, b in zip(factors["per_seed"], factors["bounds"], strict=True)
    )
    return per_seed, NOT_MEASURED if factors["mean_std"] is None else f"×{_fmt(*factors['mean_std'])}"


def summarise(runs: dict[str, dict[int, dict[int, dict[str, Any]]]], final: int) -> dict[str, Any]:
    """Final values (mean ± std over seeds), paired differences against the baseline (Holm over the whole
    table: arms × metrics), speed-ups."""
    baseline = runs.get("baseline", {})
    summary: dict[str, Any] = {}
    for arm, seeds in runs.items():
        done = {seed: e for seed, e in seeds.items() if final in e}
        if not done:
            continue
        row: dict[str, Any] = {"seeds": sorted(done), "final": {}, "paired": {}, "speedup": {}}
        for metric in HIGHER_IS_BETTER:
            values = [scalar_metrics(e[final])[metric] for e in done.values()]
            row["final"][metric] = mean_std(values)
        per_level = {
            level: mean_std([e[final]["velocity_error"][level] for e in done.values()])
            for level in next(iter(done.values()))[final]["velocity_error"]
        }
        row["final"]["velocity_error_per_level"] = per_level
        last = {seed: {int(k): v for k, v in e[final]["probe_per_layer"].items()} for seed, e in done.items()}
        layers = sorted(next(iter(last.values())))
        row["final"]["probe_per_layer"] = {
            layer: mean_std([statistics.fmean(last[seed][layer]) for seed in last]) for layer in layers
        }
        row["final"]["probe_split_std"] = {  # the probe's own noise: std over split seeds, averaged over runs
            layer: statistics.fmean(statistics.stdev(last[seed][layer]) for seed in last) for layer in layers
        }
        row["final"]["cknna_per_layer"] = {
            layer: mean_std([e[final]["cknna_per_layer"][str(layer)] for e in done.values()]) for layer in layers
        }
        paired_seeds = [seed for seed in done if final in baseline.get(seed, {})]
        if arm != "baseline" and paired_seeds:
            for metric, higher in HIGHER_IS_BETTER.items():
                differences = [
                    scalar_metrics(done[seed][final])[metric] - scalar_metrics(baseline[seed][final])[metric]
                    for seed in paired_seeds
                ]
                entry = paired_over_seeds(differences)
                if metric in PER_CLIP:  # each seed's model, over its clips: a description, not the arm's test
                    entry["within_seed"] = within_seed(
                        {
                            s: per_clip(done[s][final], metric) - per_clip(baseline[s][final], metric)
                            for s in paired_seeds
                        }
                    )
                row["paired"][metric] = entry
                factors, bounds = [], []
                for seed in paired_seeds:
                    steps = sorted(
                        step
                        for step in set(baseline[seed]) & set(done[seed])
                        if metric in scalar_metrics(baseline[seed][step]) and metric in scalar_metrics(done[seed][step])
                    )
                    curve = [scalar_metrics(baseline[seed][s])[metric] for s in steps]
                    ours = [scalar_metrics(done[seed][s])[metric] for s in steps]
                    factor, bound = speedup(steps, curve, ours, higher)
                    factors.append(factor)
                    bounds.append(bound)
                measured = None not in factors
                row["speedup"][metric] = {
                    "per_seed": factors,
                    "bounds": bounds,
                    "mean_std": mean_std(factors) if measured else None,
                }
        summary[arm] = row
    tests = [entry for row in summary.values() for entry in row["paired"].values()]
    for entry, adjusted in zip(tests, holm([entry["t_test_p"] for entry in tests]), strict=True):
        entry["holm_p"] = adjusted
    return summary


def collect_robustness(jobs: list[Job]) -> dict[str, dict[int, dict[str, list[dict[str, float]]]]]:
    """{arm: {seed: curves}}: each final model's robustness curves, as run_robustness wrote them."""
    runs: dict[str, dict[int, dict[str, list[dict[str, float]]]]] = {}
    for job in jobs:
        record = _read(job.run_dir / "robustness.json")
        if record:
            runs.setdefault(job.arm, {})[job.seed] = record["curves"]
    return runs


def robustness_summary(runs: dict[str, dict[int, dict[str, list[dict[str, float]]]]]) -> dict[str, Any]:
    """{arm: {kind: [{strength, change (mean, std), per_seed, paired}]}} of the velocity error's change under
    perturbation; `paired`: the change arm − baseline per seed, its t-test over seeds, Holm over the table."""
    baseline = runs.get("baseline", {})
    summary: dict[str, Any] = {}
    for arm, seeds in runs.items():
        summary[arm] = {}
        for kind, rows in next(iter(seeds.values())).items():
            summary[arm][kind] = []
            for index, row in enumerate(rows):
                changes = {seed: curves[kind][index]["velocity_error_change"] for seed, curves in seeds.items()}
                entry = {"strength": row["strength"], "change": mean_std(list(changes.values()))}
                entry["per_seed"] = {str(seed): change for seed, change in changes.items()}
                paired_seeds = [seed for seed in changes if seed in baseline]
                if arm != "baseline" and row["strength"] > 0 and paired_seeds:
                    entry["paired"] = paired_over_seeds(
                        [changes[s] - baseline[s][kind][index]["velocity_error_change"] for s in paired_seeds]
                    )
                summary[arm][kind].append(entry)
    tests = [row["paired"] for kinds in summary.values() for rows in kinds.values() for row in rows if "paired" in row]
    for entry, adjusted in zip(tests, holm([entry["t_test_p"] for entry in tests]), strict=True):
        entry["holm_p"] = adjusted
    return summary


def plot_study(runs, summary, robustness, path: Path) -> Path:
    """Curves (mean ± std over seeds) of every metric, the per-layer probe and the robustness curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*HIGHER_IS_BETTER, "probe_per_layer", "cknna_per_layer"]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.7 * rows), dpi=100)
    axes = axes.ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for arm, seeds in runs.items():
            color = COLORS.get(arm)
            if panel in HIGHER_IS_BETTER:
                common = set.intersection(*(set(e) for e in seeds.values())) if seeds else set()
                steps = sorted(s for s in common if all(panel in scalar_metrics(e[s]) for e in seeds.values()))
                if not steps:
                    continue
                values = np.array([[scalar_metrics(e[s])[panel] for s in steps] for e in seeds.values()])
                mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if len(values) > 1 else 0 * values[0]
                ax.plot(steps, mean, "o-", markersize=3, color=color, label=f"{arm} ({len(values)})")
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
                ax.set_xlabel("training step")
                ax.set_title(LABELS[panel], fontsize=9)
            elif panel in ("probe_per_layer", "cknna_per_layer") and arm in summary:
                per_layer = summary[arm]["final"][panel]
                layers = sorted(per_layer)
                mean = [per_layer[layer][0] for layer in layers]
                std = [per_layer[layer][1] for layer in layers]
                ax.errorbar(layers, mean, yerr=std, fmt="o-", markersize=3, capsize=3, color=color, label=arm)
                ax.set_xlabel("backbone layer")
                what = "probe accuracy" if panel == "probe_per_layer" else "CKNNA vs the proxy video classifier"
                ax.set_title(f"{what} of history features, final step", fontsize=9)
        if panel == "proxy_fd":
            ax.set_yscale("log")
        ax.legend(fontsize=6)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    if robustness:
        kinds_run = list(next(iter(robustness.values())))
        fig, axes = plt.subplots(1, len(kinds_run), figsize=(4.2 * len(kinds_run), 3.4), dpi=100, squeeze=False)
        for ax, kind in zip(axes[0], kinds_run, strict=True):
            for arm, kinds in robustness.items():
                rows_ = kinds[kind]
                x = [r["strength"] for r in rows_]
                ax.errorbar(
                    x,
                    [r["change"][0] for r in rows_],
                    yerr=[r["change"][1] for r in rows_],
                    fmt="o-",
                    markersize=3,
                    capsize=3,
                    color=COLORS.get(arm),
                    label=arm,
                )
            ax.set_xlabel(f"{kind} strength")
            ax.set_title(f"velocity error increase, {kind}", fontsize=9)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path.with_name(path.stem + "_robustness.png"))
        plt.close(fig)
    return path


def _within_seed_cell(entry: dict[str, Any]) -> str:
    """Each seed's own model over its clips, direction first: what the pooled clips would have hidden."""
    return (
        "; ".join(
            f"seed {t['seed']}: {t['difference']:+.3g} ({_p(t['t_test_p'])})" for t in entry.get("within_seed", [])
        )
        or "–"
    )


def _robustness_lines(payload: dict[str, Any]) -> list[str]:
    robustness, pending = payload.get("robustness"), payload.get("robustness_pending")
    if pending:
        old = pending["before_issue_23"]
        columns = _perturbed(next(iter(old.values())))
        return [
            "",
            "## Robustness: increase of the velocity error (s = 0.75) when the context is perturbed",
            "",
            f"**Pending a rerun.** {pending['reason']} Rerun: `{pending['command']}`.",
            "",
            "The numbers published before (mean ± std over seeds; the t-test p-values quoted from them cannot "
            "be recomputed, and the perturbations drew the evaluation's own ε):",
            "",
            "| arm | " + " | ".join(f"{kind} {row['strength']:g}" for kind, row in columns) + " |",
            "|---|" + "---|" * len(columns),
            *(
                f"| {arm} | "
                + " | ".join(_fmt(row["change"], row["change_std"], 2) for _, row in _perturbed(kinds))
                + " |"
                for arm, kinds in old.items()
            ),
        ]
    if not robustness:
        return []
    columns = _perturbed(next(iter(robustness.values())))
    lines = [
        "",
        "## Robustness: increase of the velocity error (s = 0.75) when the context is perturbed",
        "",
        "Final checkpoints; the later history frames stay true; mean ± std over seeds, then the per-seed "
        "increases, then the arm's paired test against the baseline: t-test over seeds of the per-seed "
        f"difference of increases, Holm-adjusted over the {sum(1 for _ in _robustness_tests(robustness))} tests "
        "of this table.",
        "",
        "| arm | " + " | ".join(f"{kind} {row['strength']:g}" for kind, row in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm, kinds in robustness.items():
        cells = []
        for _, row in _perturbed(kinds):
            cell = f"{_fmt(*row['change'], 2)} [{', '.join(f'{v:.2g}' for v in row['per_seed'].values())}]"
            if "paired" in row:
                cell += f" {_p(row['paired']['t_test_p'])}, Holm {_p(row['paired']['holm_p'])}"
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _perturbed(kinds: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, row) for kind, rows in kinds.items() for row in rows if row["strength"] > 0]


def _robustness_tests(robustness: dict[str, Any]) -> list[dict[str, Any]]:
    return [row["paired"] for kinds in robustness.values() for _, row in _perturbed(kinds) if "paired" in row]


def markdown(name: str, payload: dict[str, Any]) -> str:
    settings, summary, hidden = payload["settings"], payload["summary"], payload["hidden_objects"]
    final = settings["eval_steps"][-1]
    seeds = sorted({int(seed) for seeds in payload["evaluations"].values() for seed in seeds})
    tests = sum(len(row["paired"]) for row in summary.values())
    lines = [
        "# Does MiMo help when masking keeps the content? (`benchmarks/mimo_study.py`)",
        "",
        f"_{settings['machine']}; {settings['wall']}._",
        "",
        f"{settings['model']}; {final} steps per arm, evaluated at steps {settings['eval_steps']}; "
        f"training seeds {seeds} (each seed: the same initial weights, clips and noise in every arm); "
        f"held-out velocity error on {settings['sizes']['velocity_clips']} clips, trajectories on "
        f"{settings['sizes']['trajectory_clips']} clips ({settings['sample_steps']} Euler steps), probes on "
        f"{settings['sizes']['probe_clips']} clips with split seeds {list(settings['sizes']['probe_seeds'])}.",
        "",
        "## Objects a tube mask hides (one random mask per clip, 2000 clips, up to 3 objects)",
        "",
        "| frames | tokens per frame | r | hidden in both context frames | in the whole history | "
        "in the frame before a generated one |",
        "|---|---|---|---|---|---|",
    ]
    for row in hidden:
        lines.append(
            f"| {row['frame_size']}² px, patch {row['patch_size']} | {row['tokens']} | {row['ratio']} | "
            f"{row['hidden_in_all_context_frames']:.1%} | {row['hidden_in_whole_history']:.1%} | "
            f"{row['hidden_in_frame_before_a_generated_one']:.1%} |"
        )
    lines += [
        "",
        f"## Final values at step {final} (mean ± std over seeds)",
        "",
        "| arm | seeds | velocity error s=0.5 / 0.75 / 0.9 | teacher-forced traj. (px) | autoregressive traj. (px) | "
        "proxy FD | probe, last layer | probe, best layer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in summary.items():
        f = row["final"]
        levels = " / ".join(_fmt(*v) for v in f["velocity_error_per_level"].values())
        lines.append(
            f"| {arm} | {len(row['seeds'])} | {levels} | {_fmt(*f['teacher_forced_trajectory_error'])} | "
            f"{_fmt(*f['trajectory_error'])} | {_fmt(*f['proxy_fd'])} | {_fmt(*f['probe_last_layer'])} | "
            f"{_fmt(*f['probe_best_layer'])} |"
        )
    lines += [
        "",
        f"Copy-last-frame reference (both trajectory errors): {settings['copy_last_px']:.3g} px.",
        "",
        "## Paired against the baseline (arm − baseline at the final step; negative = arm lower)",
        "",
        "The unit of replication is the training seed (`benchmarks/study_statistics.py`): the difference per "
        "seed, its mean ± std, and a t-test over seeds (paired), Holm-adjusted over the "
        f"{tests} tests of this table. Within each seed: that seed's model against its baseline over the "
        "clips (mean difference, paired t-test over clips): a description of one trained model per seed, each "
        "with its direction, not a test of the arm. Speed-up: per seed, see `speedup` in the script (above 1: "
        "the arm gets there in fewer steps; n/a: fewer than two shared evaluations).",
        "",
        "| arm | metric | difference (mean ± std over seeds) | per seed | t-test over seeds | Holm | "
        "within each seed, over clips | speed-up per seed | speed-up mean ± std |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in summary.items():
        for metric, entry in row["paired"].items():
            per_seed, speed = _speedup_cell(row["speedup"][metric])
            differences = ", ".join(f"{d:+.3g}" for d in entry["per_seed"])
            lines.append(
                f"| {arm} | {LABELS[metric]} | {_fmt(*entry['difference'])} | {differences} | "
                f"{_p(entry['t_test_p'])} | {_p(entry['holm_p'])} | {_within_seed_cell(entry)} | {per_seed} | {speed} |"
            )
    lines += ["", "## History features at every layer (final step; mean ± std over seeds)", ""]
    layers = sorted(next(iter(summary.values()))["final"]["probe_per_layer"]) if summary else []
    lines += [
        "| arm | "
        + " | ".join(f"probe L{layer}" for layer in layers)
        + " | "
        + " | ".join(f"CKNNA L{layer}" for layer in layers)
        + " |",
        "|---|" + "---|" * (2 * len(layers)),
    ]
    for arm, row in summary.items():
        f = row["final"]
        lines.append(
            f"| {arm} | "
            + " | ".join(_fmt(*f["probe_per_layer"][layer]) for layer in layers)
            + " | "
            + " | ".join(_fmt(*f["cknna_per_layer"][layer]) for layer in layers)
            + " |"
        )
    if summary:
        noise = statistics.fmean(v for row in summary.values() for v in row["final"]["probe_split_std"].values())
        lines += ["", f"The probe's own noise (std over its split seeds, mean over runs and layers): {noise:.3f}."]
    lines += _robustness_lines(payload)
    lines += ["", f"![study]({name}.png)", ""]
    if payload.get("robustness"):
        lines += [f"![robustness]({name}_robustness.png)", ""]
    return "\n".join(lines)


def gather(args: argparse.Namespace, jobs: list[Job]) -> dict[str, Any]:
    """The raw numbers of every job's evaluations so far, with the settings they ran under."""
    runs = collect(jobs)
    base = jobs[0].config
    hidden = []
    for frame_size, ratio in ((16, 0.5), (32, 0.25), (32, 0.5)):
        fractions = hidden_object_fractions(frame_size, 4, ratio, base.data.num_frames, base.context_frames)
        hidden.append(
            {"frame_size": frame_size, "patch_size": 4, "tokens": (frame_size // 4) ** 2, "ratio": ratio, **fractions}
        )
    clips = _evaluation_data(base, jobs[0].sizes)["clips"]
    shown = {key: value[: jobs[0].sizes.trajectory_clips] for key, value in clips.items()}
    copied = copy_last_frame(shown["video"], base.context_frames)
    copy_last_px = statistics.fmean(per_clip_trajectory(copied, shown, base.context_frames))
    depth, width, heads = base.model.size()
    walls = [_read(job.run_dir / "study.json").get("train_wall_s", 0) for job in jobs]
    evals = [e.get("eval_wall_s", 0) for seeds in runs.values() for steps in seeds.values() for e in steps.values()]
    settings = {
        "machine": f"{machine_info(torch.device('cpu'))['cpu']}, {os.cpu_count()} cores shared with other jobs, "
        f"{args.workers} worker processes of one torch thread",
        "wall": f"training {sum(walls) / 60:.0f} min and evaluation {sum(evals) / 60:.0f} min summed over jobs",
        "model": f"{base.model.preset} (depth {depth}, width {width}, heads {heads}, decoder depth "
        f"{base.mimo.decoder_depth}), {base.data.frame_size}² px, patch {base.model.patch_size}, "
        f"{base.data.num_frames} frames ({base.context_frames} given), batch {base.train.batch_size}, lr "
        f"{base.train.lr}, EMA {base.train.ema_decay}",
        "eval_steps": list(jobs[0].eval_steps),
        "sizes": dataclasses.asdict(jobs[0].sizes),
        "sample_steps": base.sample.steps,
        "copy_last_px": copy_last_px,
    }
    return {
        "settings": settings,
        "hidden_objects": hidden,
        "evaluations": {
            arm: {str(seed): {str(step): e for step, e in steps.items()} for seed, steps in seeds.items()}
            for arm, seeds in runs.items()
        },
        "robustness_per_seed": {
            arm: {str(seed): curves for seed, curves in seeds.items()}
            for arm, seeds in collect_robustness(jobs).items()
        },
    }


def robustness_rerun(args: argparse.Namespace) -> str:
    """The command that reruns only the robustness evaluation of this study's trained runs (no retraining)."""
    runs = args.runs.relative_to(ROOT) if args.runs.is_relative_to(ROOT) else args.runs
    study = [arg for arg in sys.argv[1:] if arg not in ("--from-results", "--robustness")]
    return f"rm -f {runs}/*/robustness.json; " + shlex.join(
        ["python", "benchmarks/mimo_study.py", *study, "--robustness"]
    )


def published(args: argparse.Namespace) -> dict[str, Any]:
    """The raw numbers of benchmarks/results/NAME.json: a report rebuilt from them needs no runs.

    A report written before issue 23 kept only the mean ± std of the robustness curves: their per-seed
    values, which its p-values came from, are lost, and the perturbations drew the evaluation's own ε;
    those numbers are kept as pending, with the command that replaces them.
    """
    payload = json.loads((args.results / f"{args.name}.json").read_text())
    raw = {key: payload[key] for key in ("settings", "hidden_objects", "evaluations")}
    if "robustness_per_seed" in payload:
        raw["robustness_per_seed"] = payload["robustness_per_seed"]
    elif payload.get("robustness_pending") or payload.get("robustness"):
        raw["robustness_pending"] = payload.get("robustness_pending") or {
            "reason": "Its per-seed curves were never published, and the perturbations were seeded with the "
            "velocity error's own ε (issue 23), so neither its numbers nor their p-values can be recomputed.",
            "command": robustness_rerun(args),
            "before_issue_23": payload["robustness"],
        }
    return raw


def write_report(args: argparse.Namespace, raw: dict[str, Any]) -> Path:
    """benchmarks/results/NAME.{json,md,png} from the raw numbers (`gather` or `published`)."""
    runs = {
        arm: {int(seed): {int(step): e for step, e in steps.items()} for seed, steps in seeds.items()}
        for arm, seeds in raw["evaluations"].items()
    }
    per_seed_robustness = {
        arm: {int(seed): curves for seed, curves in seeds.items()}
        for arm, seeds in raw.get("robustness_per_seed", {}).items()
    }
    summary = summarise(runs, raw["settings"]["eval_steps"][-1])
    robustness = robustness_summary(per_seed_robustness)
    args.results.mkdir(parents=True, exist_ok=True)
    plot = plot_study(runs, summary, robustness, args.results / f"{args.name}.png")
    payload = raw | {"summary": summary, "robustness": robustness}
    _write(args.results / f"{args.name}.json", payload)
    (args.results / f"{args.name}.md").write_text(markdown(args.name, payload))
    print(f"[study] report: {args.results / args.name}.md, {plot}", flush=True)
    return args.results / f"{args.name}.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--evaluations", type=int, default=4, help="evenly spaced, the last at --steps")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS | TARGET_ARMS),
        default=list(ARMS),
        help="the tail arm follows mimo-r0.5; the target ablation arms run only when named",
    )
    parser.add_argument(
        "--sample-every",
        type=int,
        default=1,
        help="sample (trajectories, proxy FD) at every N-th evaluation and the last",
    )
    parser.add_argument("--tail-fraction", type=float, default=0.25, help="0: no tail arm")
    parser.add_argument("--workers", type=int, default=1, help="processes, one torch thread each")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="mimo_study")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every arm, section.key=value")
    parser.add_argument("--report-only", action="store_true", help="no training or evaluation of checkpoints")
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="rebuild the report from the raw numbers in RESULTS/NAME.json (no runs needed)",
    )
    parser.add_argument(
        "--robustness", action="store_true", help="velocity error of the final models under perturbed histories"
    )
    args = parser.parse_args()
    if args.from_results:
        write_report(args, published(args))
        return
    jobs = build_jobs(args)
    started = time.perf_counter()
    if not args.report_only:
        if args.workers == 1:
            for job in jobs:
                run_job(job)
        else:
            with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
                for future in [pool.submit(run_job, job) for job in jobs]:
                    future.result()
        print(f"[study] jobs done in {time.perf_counter() - started:.0f} s", flush=True)
    write_report(args, gather(args, jobs))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
