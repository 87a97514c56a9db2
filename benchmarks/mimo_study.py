"""Does MiMo help when masking keeps the content? Arms × seeds, same steps, clips and noise; paired tests.

    nohup python benchmarks/mimo_study.py --workers 2 > benchmarks/results/mimo_study.log 2>&1 &
    python benchmarks/mimo_study.py --report-only      # tables and plots from what has run so far

Arms (configs/study/cpu.yaml is the MiMo r = 0.5 arm; the others are overrides of it):
baseline (λ = 0, r = 0), masking only (λ = 0, r = 0.5), MiMo r = 0.25 and r = 0.5 (λ = 0.5), and MiMo
r = 0.5 with the unmasked fine-tuning tail (its last `--tail-fraction` of steps with r = 0, λ = 0). Every
arm trains the same number of steps from the same initial weights (train.seed) on the same clips in
the same order (data.seed), with the same noise levels and noise per step; seeds change all three.
The tail arm is the r = 0.5 run up to the tail's first step (the runs are identical there: training is
deterministic per step), so it starts from a copy of that checkpoint and trains only the tail.

At every evaluation (the EMA weights of a checkpoint): held-out velocity error with the full history
at fixed noise levels (same clips and noise for every arm, per clip, for paired tests), autoregressive
and teacher-forced trajectory error (per clip), proxy Fréchet distance of the autoregressive samples,
and the linear probe (several split seeds) and CKNNA (against the proxy video classifier) of the
history features at every layer. Each (arm, seed) is one resumable job: a run folder with its
checkpoints and a study.json of its evaluations; rerunning the command skips what is done. The report
(benchmarks/results/mimo_study.{json,md,png}) gives mean ± std over seeds, paired differences against
the baseline (paired t-test over seeds, sign test over seeds × clips) and the speed-up factor per seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mimo.config import Config, load_config, with_overrides
from mimo.data.synthetic import MovingShapes, shape_coverage, trajectories
from mimo.demo import autoregressive, teacher_forced
from mimo.evaluate import history_features, load_clips, proxy_config
from mimo.evaluation.velocity import NOISE_LEVELS, velocity_error
from mimo.metrics.depthwise import DEFAULT_PROBE_SEEDS, depthwise_scores
from mimo.metrics.fvd import extract_feature_statistics
from mimo.metrics.proxy_classifier import load_proxy_classifier, proxy_frechet_distance
from mimo.metrics.trajectory import trajectory_error
from mimo.objectives.masking import tube_mask
from mimo.train.checkpoint import CHECKPOINT_DIR
from mimo.train.trainer import load_trained_model, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "study" / "cpu.yaml"
RESULTS = ROOT / "benchmarks" / "results"
ARMS: dict[str, list[str]] = {
    "baseline": ["mimo.weight=0", "mimo.mask_ratio=0"],
    "masking-only": ["mimo.weight=0", "mimo.mask_ratio=0.5"],
    "mimo-r0.25": ["mimo.weight=0.5", "mimo.mask_ratio=0.25"],
    "mimo-r0.5": ["mimo.weight=0.5", "mimo.mask_ratio=0.5"],
}
TAIL_ARM, TAIL_SOURCE = "mimo-r0.5-tail", "mimo-r0.5"
OBJECT_PIXEL_COVERAGE = 0.5  # a pixel belongs to an object when the object covers at least half of it


@dataclass(frozen=True)
class Sizes:
    """Held-out clips per evaluation, sized so that one evaluation costs ~30 s of one core."""

    velocity_clips: int = 128
    trajectory_clips: int = 32
    probe_clips: int = 192
    probe_seeds: tuple[int, ...] = DEFAULT_PROBE_SEEDS
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


def evaluate_checkpoint(checkpoint: Path, config: Config, sizes: Sizes) -> dict[str, Any]:
    data = _evaluation_data(config, sizes)
    model, config = load_trained_model(checkpoint)
    k, clips = config.context_frames, data["clips"]
    started = time.perf_counter()
    velocity = velocity_error(model, clips["video"][: sizes.velocity_clips], k, NOISE_LEVELS, seed=0)
    shown = {key: value[: sizes.trajectory_clips] for key, value in clips.items()}
    samples, _ = autoregressive(model, config, shown, config.data.num_frames, progress=False)
    forced = teacher_forced(model, config, shown["video"])
    fd = proxy_frechet_distance(data["real_statistics"], samples, data["classifier"], method="eigh", progress=False)
    features = history_features(model, clips["video"][: sizes.probe_clips])
    clip_features = {layer: f.mean(dim=1) for layer, f in features.items()}
    labels = clips["label"][: sizes.probe_clips]
    layers = depthwise_scores(clip_features, labels, sizes.probe_seeds, sizes.probe_c, data["reference"])
    autoregressive_errors = per_clip_trajectory(samples, shown, k)
    forced_errors = per_clip_trajectory(forced, shown, k)
    return {
        "velocity_error": {str(s): round(float(v.mean()), 6) for s, v in zip(NOISE_LEVELS, velocity, strict=True)},
        "velocity_error_per_clip": [[round(float(x), 6) for x in row] for row in velocity],
        "trajectory_error": round(statistics.fmean(autoregressive_errors), 4),
        "teacher_forced_trajectory_error": round(statistics.fmean(forced_errors), 4),
        "trajectory_error_per_clip": autoregressive_errors,
        "teacher_forced_trajectory_error_per_clip": forced_errors,
        "proxy_fd": round(fd, 4),
        "probe_per_layer": {str(layer): [round(a, 4) for a in s.accuracies] for layer, s in layers.items()},
        "cknna_per_layer": {str(layer): round(s.cknna, 4) for layer, s in layers.items()},
        "eval_wall_s": round(time.perf_counter() - started, 1),
    }


# ----- jobs ----------------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, values: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(values))
    partial.replace(path)


def _checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{step:08d}"


def run_job(job: Job, position: int = 0) -> Path:
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
        record["evaluations"][str(step)] = evaluate_checkpoint(_checkpoint(job.run_dir, step), job.config, job.sizes)
        _write(out, record)
        bar.update(1)
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
    jobs: list[Job] = []
    for seed in args.seeds:
        for arm, overrides in ARMS.items():
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
            jobs.append(Job(arm, seed, config, eval_steps, run_dir, sizes))
    for seed in args.seeds if tail else ():
        source = next(job for job in jobs if job.arm == TAIL_SOURCE and job.seed == seed)
        run_dir = args.runs / f"{TAIL_ARM}-seed{seed}"
        config = with_overrides(source.config, [f"mimo.unmasked_tail_steps={tail}", f"train.out_dir={run_dir}"])
        tail_steps = tuple(step for step in eval_steps if step > args.steps - tail)
        jobs.append(
            Job(TAIL_ARM, seed, config, tail_steps, run_dir, sizes, _checkpoint(source.run_dir, args.steps - tail))
        )
    return jobs


def write_report(args: argparse.Namespace, jobs: list[Job]) -> Path:
    """Every job's evaluations in one JSON (the full report is drawn from it)."""
    records = [_read(job.run_dir / "study.json") for job in jobs]
    path = args.results / f"{args.name}.json"
    args.results.mkdir(parents=True, exist_ok=True)
    _write(path, {"steps": args.steps, "seeds": args.seeds, "records": [r for r in records if r]})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--evaluations", type=int, default=4, help="evenly spaced, the last at --steps")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--tail-fraction", type=float, default=0.25, help="0: no tail arm")
    parser.add_argument("--workers", type=int, default=1, help="processes, one torch thread each")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="mimo_study")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every arm, section.key=value")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
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
    write_report(args, jobs)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
