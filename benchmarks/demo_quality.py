"""How a run's samples improve with training: trajectory error and objects lost at its checkpoints, against copy-last.

    mimo train src/mimo/apps/demo.yaml train.out_dir=runs/demo-long train.max_seconds=1500 train.steps=6000 \\
        train.checkpoint_every=500 train.keep_checkpoints=20
    python benchmarks/demo_quality.py runs/demo-long [--clips 32] [--threads 1]
    python benchmarks/demo_quality.py runs/reference --every 4 --name reference_quality --out benchmarks/results

For each checkpoint (EMA weights; with `--every N` every N-th and the last) the held-out clips are
continued from their context frames in two ways: autoregressive (each frame sampled from the model's own
earlier frames, as `mimo demo` does), to the training length and to twice it, and teacher-forced (each
frame sampled from the true earlier frames) to the training length. The gap between the two is what
errors compound to; teacher-forced against copy-last says whether the model has learned the motion at
all. Writes NAME.json (and .png) with the machine it ran on to --out (default runs/bench-results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from harness import CpuShare, default_results_dir, machine_info
from mimo.data.media import plot_curves
from mimo.evaluation.motion import copy_last_scores, motion_scores
from mimo.evaluation.protocols import held_out_clips
from mimo.train.checkpoint import list_checkpoints, load_trained_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder with several checkpoints")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--every", type=int, default=1, help="evaluate every N-th checkpoint (and the last)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="demo_quality")
    parser.add_argument(
        "--out", type=Path, default=default_results_dir(), help="results folder (published: benchmarks/results)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = list_checkpoints(args.run)
    if not checkpoints:
        raise SystemExit(f"no checkpoints in {args.run}: train with train.checkpoint_every=N first (see --help)")
    checkpoints = [c for i, c in enumerate(checkpoints, 1) if i % args.every == 0 or c == checkpoints[-1]]
    share = CpuShare()
    machine = machine_info(torch.device("cpu"))
    rows, copy_last, config = [], None, None
    for checkpoint in checkpoints:
        model, config = load_trained_model(checkpoint)
        clips = held_out_clips(config, 2 * config.data.num_frames, args.clips)
        if copy_last is None:
            copy_last = copy_last_scores(config, clips)
        scores = motion_scores(model, config, clips, teacher_forced_at=(1,))
        row = {"step": int(checkpoint.name.split("_")[-1]), **scores}
        print(json.dumps(row), flush=True)
        rows.append(row)
    payload = {
        "benchmark": args.name,
        "machine": machine | share.report(),
        "settings": {"run": str(args.run), "clips": args.clips, "sample_steps": config.sample.steps},
        "results": {"copy_last": copy_last, "checkpoints": rows},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    steps = [row["step"] for row in rows]
    curves = {
        "autoregressive, 1x": (steps, [row["ar_px"] for row in rows]),
        "autoregressive, 2x": (steps, [row["ar2_px"] for row in rows]),
        "teacher-forced, 1x": (steps, [row["tf_px"] for row in rows]),
        "copy last frame, 1x": (steps, [copy_last["ar_px"]] * len(rows)),
        "copy last frame, 2x": (steps, [copy_last["ar2_px"]] * len(rows)),
    }
    plot_curves(
        curves, args.out / f"{args.name}.png", xlabel="training step", ylabel="trajectory error (px)", log_y=False
    )
    print(json.dumps(payload["results"], indent=1))


if __name__ == "__main__":
    main()
