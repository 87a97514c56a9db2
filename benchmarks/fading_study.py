"""What stops the demo's samples from fading? Training arms × seeds, step-matched and paired; sampler variants.

    nohup python benchmarks/fading_study.py > benchmarks/results/fading_study.log 2>&1 &
    python benchmarks/fading_study.py --report-only     # the report of what has run so far

Every arm trains the demo's model on the demo's videos (src/mimo/apps/demo.yaml, with the paper's plain CTF in
place of the demo's own history options: PLAIN_CTF) for `--steps` steps from
the same initial weights (train.seed), on the same clips in the same order (data.seed), with the same noise
levels, noise and tube masks per step (the history's noise is drawn after them); a seed changes all of
these together. The arms differ only in what the history is during training:

- clean-history: the paper's Complete Teacher Forcing, as the demo trains;
- history-noise: every history frame noised to s ~ U[0, 0.3], the level told to the model (GameNGen);
- history-noise+dropout: the same, and 10 % of clips with a history of pure noise, for history guidance;
- no-ema, ema-0.99-flat: the clean-history arm sampled from its raw weights (no average), or from an EMA of
  decay 0.99 without warm-up (a horizon of 100 steps). The EMA does not change training, so these arms differ
  from clean-history only in the weights sampled. (The demo's decay 0.995 with warm-up, min(d, (1+n)/(10+n)),
  is 0.982 at step 500: a slower decay with warm-up would sample the same weights as clean-history.)

Each final EMA model is evaluated with the samplers that apply to it (SAMPLERS) on the same held-out clips
with the same noise: autoregressive and teacher-forced trajectory error and objects lost at the training
length (8 frames, 2 given) and at twice it (sliding window). The report gives mean ± std over seeds and the
paired difference to the clean-history arm's default sampler, per seed, with a paired t-test over seeds
(the seed is the unit of replication: three seeds are three trained models). Each (arm, seed) is one
resumable job: rerunning the command skips what is done (finished jobs are kept in
benchmarks/results/fading_study_jobs/, so a fresh checkout resumes too).

`--study own-history` asks whether the reference recipe's second phase gains from training on the model's own
samples as history (configs/reference/demo-own-history.yaml against demo-guidance.yaml): every arm fine-tunes the
same finished first phase (`--init-from runs/reference`) for `--steps` steps with history dropout, with and
without own-history training, and each is sampled with and without history guidance (2 × 2, paired per seed):

    python benchmarks/fading_study.py --study own-history --init-from runs/reference --steps 750
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from harness import machine_info
from mimo.config import Config, load_config, with_overrides
from mimo.data.media import plot_curves
from mimo.evaluation.motion import copy_last_scores, motion_scores
from mimo.evaluation.protocols import held_out_clips
from mimo.train.checkpoint import load_trained_model
from mimo.train.logger import read_metrics
from mimo.train.trainer import train

# The paper's plain CTF, whatever the demo's own recipe is now: every arm starts here.
PLAIN_CTF = [
    "diffusion.history_noise_max=0",
    "diffusion.history_dropout=0",
    "sample.history_noise=0",
    "sample.history_guidance=1",
]
ARMS = {
    "clean-history": [],
    "history-noise": ["diffusion.history_noise_max=0.3"],
    "history-noise+dropout": ["diffusion.history_noise_max=0.3", "diffusion.history_dropout=0.1"],
    "no-ema": ["train.ema_decay=0"],
    "ema-0.99-flat": ["train.ema_decay=0.99", "train.ema_warmup=false"],
}
# Sampler variants: overrides of the sample section, and the arms they apply to (None: every arm).
SAMPLERS: dict[str, tuple[list[str], tuple[str, ...] | None]] = {
    "euler-20": ([], None),  # the demo's sampler
    "heun-10": (["sample.solver=heun", "sample.steps=10"], ("clean-history",)),  # 19 evaluations, as euler-20's 20
    "shift-3": (["sample.shift=3"], ("clean-history",)),
    "history-noise-0.1": (["sample.history_noise=0.1"], ("history-noise", "history-noise+dropout")),
    "history-guidance-1.5": (["sample.history_noise=0.1", "sample.history_guidance=1.5"], ("history-noise+dropout",)),
}
REFERENCE = ("clean-history", "euler-20")  # what every cell is paired against
REFERENCE_SECOND_PHASE = Path(__file__).resolve().parents[1] / "configs" / "reference" / "demo-guidance.yaml"
METRICS = ("ar_px", "ar_lost", "tf_px", "tf_lost", "gap_px", "ar2_px", "ar2_lost", "tf2_px", "tf2_lost", "gap2_px")


def demo_config(overrides: list[str]) -> Config:
    with resources.as_file(resources.files("mimo.apps") / "demo.yaml") as path:
        return load_config(path, overrides)


@dataclass(frozen=True)
class Study:
    """What every arm starts from (a config built from overrides), the arms' own overrides, the samplers (each
    with the arms it applies to; None: every arm), the (arm, sampler) every cell is paired against, and whether
    every arm fine-tunes a finished run (`--init-from`) rather than training from scratch."""

    base: Callable[[list[str]], Config]
    arms: dict[str, list[str]]
    samplers: dict[str, tuple[list[str], tuple[str, ...] | None]]
    reference: tuple[str, str]
    fine_tunes: bool = False


STUDIES = {
    "fading": Study(lambda overrides: demo_config([*PLAIN_CTF, *overrides]), ARMS, SAMPLERS, REFERENCE),
    "own-history": Study(
        lambda overrides: load_config(REFERENCE_SECOND_PHASE, overrides),
        {"history-dropout-only": [], "own-history": ["diffusion.own_history=0.5"]},
        {"guidance-2": ([], None), "no-guidance": (["sample.history_guidance=1"], None)},
        ("history-dropout-only", "guidance-2"),
        fine_tunes=True,
    ),
}


def published_job(arm: str, seed: int, args: argparse.Namespace) -> Path:
    """Where a finished job's scores are kept with the results (the run folders are not published): a later
    session resumes the study from them without retraining what is done."""
    return args.out / f"{args.name}_jobs" / f"{arm}-s{seed}.json"


def run_job(study: Study, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one (arm, seed) and evaluate its final EMA model with every sampler that applies; resumable."""
    run_dir = args.runs / f"{arm}-s{seed}"
    result_path = published_job(arm, seed, args)
    if result_path.exists():
        return json.loads(result_path.read_text())
    overrides = [
        *study.arms[arm],
        *([f"train.init_from={args.init_from}"] if args.init_from else []),
        f"train.seed={seed}",
        f"data.seed={seed}",
        f"train.steps={args.steps}",
        "train.max_seconds=null",
        f"train.checkpoint_every={args.steps // 4}",
        "train.sample_at_end=false",
        "train.tensorboard=false",
        f"train.out_dir={run_dir}",
    ]
    started = time.perf_counter()
    train(study.base(overrides))
    train_seconds = time.perf_counter() - started
    model, config = load_trained_model(run_dir)
    clips = held_out_clips(config, 2 * config.data.num_frames, args.clips)
    results = {}
    for sampler, (sample_overrides, arms) in study.samplers.items():
        if arms is None or arm in arms:
            started_eval = time.perf_counter()
            results[sampler] = motion_scores(model, with_overrides(config, sample_overrides), clips)
            results[sampler]["eval_seconds"] = round(time.perf_counter() - started_eval, 1)
            print(arm, seed, sampler, json.dumps(results[sampler]), flush=True)
    logged = read_metrics(run_dir)
    rates = [record["clips_per_second"] for record in logged if "clips_per_second" in record]
    payload = {
        "arm": arm,
        "seed": seed,
        "steps": args.steps,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(config.train.batch_size / statistics.median(rates), 4) if rates else None,
        "final_diffusion_loss": logged[-1].get("diffusion") if logged else None,
        "samplers": results,
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(payload, indent=1))
    return payload


def copy_last_baseline(study: Study, clips_count: int) -> dict[str, float]:
    config = study.base([])
    return copy_last_scores(config, held_out_clips(config, 2 * config.data.num_frames, clips_count))


def summarise(study: Study, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (arm, sampler) and metric: mean ± std over seeds, and the paired difference to the study's reference
    cell per seed with its paired t-test over seeds."""
    by_cell: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for job in jobs:
        for sampler, row in job["samplers"].items():
            by_cell.setdefault((job["arm"], sampler), {})[job["seed"]] = row
    reference = by_cell.get(study.reference, {})
    cells = []
    for (arm, sampler), rows in by_cell.items():
        seeds = sorted(rows)
        cell: dict[str, Any] = {"arm": arm, "sampler": sampler, "seeds": seeds}
        for metric in METRICS:
            values = [rows[s][metric] for s in seeds]
            cell[metric] = {
                "mean": round(statistics.fmean(values), 3),
                "std": round(statistics.stdev(values), 3) if len(values) > 1 else None,
                "per_seed": values,
            }
            paired = [s for s in seeds if s in reference]
            if (arm, sampler) != study.reference and len(paired) >= 2:
                differences = [rows[s][metric] - reference[s][metric] for s in paired]
                test = stats.ttest_rel([rows[s][metric] for s in paired], [reference[s][metric] for s in paired])
                cell[metric]["paired_difference"] = {
                    "mean": round(statistics.fmean(differences), 3),
                    "std": round(statistics.stdev(differences), 3),
                    "per_seed": [round(d, 3) for d in differences],
                    "p": None if test.pvalue != test.pvalue else round(float(test.pvalue), 4),
                }
        cells.append(cell)
    costs = {}
    for arm in study.arms:
        times = [job["seconds_per_step"] for job in jobs if job["arm"] == arm and job["seconds_per_step"]]
        if times:
            costs[arm] = round(statistics.median(times), 3)
    return {"cells": cells, "seconds_per_step": costs}


def _cell_text(value: dict[str, Any]) -> str:
    text = f"{value['mean']:.2f} ± {value['std']:.2f}" if value["std"] is not None else f"{value['mean']:.2f}"
    paired = value.get("paired_difference")
    if paired:
        text += f" ({paired['mean']:+.2f} ± {paired['std']:.2f}, p {paired['p']})"
    return text


def markdown(summary: dict[str, Any], copy_last: dict[str, float], settings: dict[str, Any]) -> str:
    lines = [
        f"# What stops the fading? (`{settings['command']}`)",
        "",
        f"_{settings['machine']['cpu']}, {settings['machine']['torch_threads']} thread(s), torch "
        f"{settings['machine']['torch']}; {settings['date']}._",
        "",
        f"The demo's model and videos, {settings['steps']} steps per run{settings['start']}, "
        f"seeds {settings['seeds']} (paired: same "
        f"weights, clips, noise and masks per seed); {settings['clips']} held-out clips, the same noise for every "
        "model. px: trajectory error (misses scored as a random guess); lost: share of objects not found; "
        "gap: autoregressive − teacher-forced. In brackets: the paired difference to "
        f"{' with the '.join(settings['reference'])} sampler (mean ± std over seeds, paired t-test p over seeds; "
        f"n ≤ {len(settings['seeds'])} gives "
        "little power, so read the per-seed signs in the JSON as well). An arm lists the seeds it has finished; "
        "its differences pair only those.",
        "",
        f"Copy-last: {copy_last['ar_px']} px, {copy_last['ar_lost']:.0%} lost at the training length; "
        f"{copy_last['ar2_px']} px, {copy_last['ar2_lost']:.0%} lost at twice it.",
        "",
        "| arm | sampler | AR px (1×) | AR lost (1×) | TF px (1×) | gap (1×) | AR px (2×) | AR lost (2×) | "
        "TF px (2×) | gap (2×) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in summary["cells"]:
        metrics = ("ar_px", "ar_lost", "tf_px", "gap_px", "ar2_px", "ar2_lost", "tf2_px", "gap2_px")
        lines.append(
            f"| {cell['arm']} (seeds {', '.join(map(str, cell['seeds']))}) | {cell['sampler']} | "
            + " | ".join(_cell_text(cell[m]) for m in metrics)
            + " |"
        )
    lines += ["", "Training cost (median seconds per step over the logged intervals, one thread, shared machine):"]
    lines += [f"- {arm}: {seconds} s" for arm, seconds in summary["seconds_per_step"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], copy_last: dict[str, float], path: Path) -> Path:
    """Autoregressive error at 1× and 2× the training length per (arm, sampler), copy-last as a line."""
    curves = {}
    for cell in summary["cells"]:
        label = f"{cell['arm']} / {cell['sampler']}"
        curves[label] = ([1, 2], [cell["ar_px"]["mean"], cell["ar2_px"]["mean"]])
    curves["copy last frame"] = ([1, 2], [copy_last["ar_px"], copy_last["ar2_px"]])
    return plot_curves(curves, path, title="autoregressive trajectory error (px) at 1x and 2x the training length")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=list(STUDIES), default="fading")
    parser.add_argument("--init-from", help="the finished run every arm fine-tunes (the own-history study)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", help="a subset of the study's arms (default: all)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=Path("runs/fading-study"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", help="results' file stem (default: fading_study, own_history_study)")
    parser.add_argument("--report-only", action="store_true", help="summarise the finished jobs, train nothing")
    args = parser.parse_args()
    study = STUDIES[args.study]
    args.name = args.name or f"{args.study.replace('-', '_')}_study"
    args.arms = args.arms or list(study.arms)
    if unknown := set(args.arms) - set(study.arms):
        parser.error(f"--arms {sorted(unknown)}: the {args.study} study's arms are {list(study.arms)}")
    if study.fine_tunes != bool(args.init_from):
        fine_tuning = [name for name, each in STUDIES.items() if each.fine_tunes]
        parser.error(f"--init-from RUN (the finished run every arm fine-tunes) goes with --study {fine_tuning} only")
    torch.set_num_threads(args.threads)
    jobs = []
    for seed in args.seeds:  # seed-major: every arm of a seed before the next seed, so partial results pair
        for arm in args.arms:
            path = published_job(arm, seed, args)
            if args.report_only:
                if path.exists():
                    jobs.append(json.loads(path.read_text()))
            else:
                jobs.append(run_job(study, arm, seed, args))
    if not jobs:
        raise SystemExit(f"no finished jobs under {args.runs}")
    summary = summarise(study, jobs)
    copy_last = copy_last_baseline(study, args.clips)
    settings = {
        "study": args.study,
        "start": f" from {args.init_from}" if args.init_from else " from scratch",
        "reference": list(study.reference),
        "steps": sorted({job["steps"] for job in jobs}),
        "seeds": sorted({job["seed"] for job in jobs}),
        "clips": args.clips,
        "machine": machine_info(torch.device("cpu")),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/fading_study.py" + (f" --study {args.study}" if args.study != "fading" else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": args.name, "settings": settings, "copy_last": copy_last, "summary": summary, "jobs": jobs}
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(summary, copy_last, settings))
    plot(summary, copy_last, args.out / f"{args.name}.png")
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
