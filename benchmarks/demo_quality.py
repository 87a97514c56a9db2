"""How the demo's samples improve with training: trajectory error at every checkpoint of a run.

    mimo train src/mimo/apps/demo.yaml train.out_dir=runs/demo-long train.max_seconds=1500 train.steps=6000 \\
        train.checkpoint_every=500 train.keep_checkpoints=20
    python benchmarks/demo_quality.py runs/demo-long [--clips 32] [--threads 1]

For each checkpoint (EMA weights) the demo's held-out clips are continued from their context frames in
two ways: autoregressive (each frame sampled from the model's own earlier frames, as `mimo demo` does)
and teacher-forced (each frame sampled from the true earlier frames). The gap between the two is what
errors compound to; teacher-forced against copy-last says whether the model has learned the motion at
all. Writes demo_quality.json (and .png) with the machine it ran on to --out (default runs/bench-results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from harness import CpuShare, default_results_dir, machine_info
from mimo.data.media import plot_curves
from mimo.evaluation.metrics import score_trajectory
from mimo.evaluation.protocols import autoregressive, copy_last_frame, held_out_clips, teacher_forced
from mimo.train.checkpoint import list_checkpoints, load_trained_model


def scores(videos: torch.Tensor, clips: dict[str, torch.Tensor], k: int) -> dict[str, float | list[float]]:
    error = score_trajectory(videos, clips, k)
    return {
        "error_px": round(error.mean_error, 3),
        "miss_rate": round(error.miss_rate, 3),
        "per_frame_px": [round(x, 2) for x in error.per_frame_error.tolist()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder with several checkpoints")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=default_results_dir(), help="results folder (published: benchmarks/results)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = list_checkpoints(args.run)
    if not checkpoints:
        raise SystemExit(f"no checkpoints in {args.run}: train with train.checkpoint_every=N first (see --help)")
    share = CpuShare()
    machine = machine_info(torch.device("cpu"))
    rows = []
    copy_last = None
    for checkpoint in checkpoints:
        model, config = load_trained_model(checkpoint)
        clips = held_out_clips(config, config.data.num_frames, args.clips)
        k = config.context_frames
        if copy_last is None:
            copy_last = scores(copy_last_frame(clips["video"], k), clips, k)
        row = {"step": int(checkpoint.name.split("_")[-1])}
        samples, _ = autoregressive(model, config, clips, config.data.num_frames, progress=False)
        row["autoregressive"] = scores(samples, clips, k)
        row["teacher_forced"] = scores(teacher_forced(model, config, clips["video"]), clips, k)
        print(json.dumps(row), flush=True)
        rows.append(row)
    payload = {
        "benchmark": "demo_quality",
        "machine": machine | share.report(),
        "settings": {"run": str(args.run), "clips": args.clips, "sample_steps": config.sample.steps},
        "results": {"copy_last": copy_last, "checkpoints": rows},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_quality.json").write_text(json.dumps(payload, indent=1) + "\n")
    steps = [row["step"] for row in rows]
    curves = {
        "autoregressive": (steps, [row["autoregressive"]["error_px"] for row in rows]),
        "teacher-forced": (steps, [row["teacher_forced"]["error_px"] for row in rows]),
        "copy last frame": (steps, [copy_last["error_px"]] * len(rows)),
    }
    plot_curves(
        curves, args.out / "demo_quality.png", xlabel="training step", ylabel="trajectory error (px)", log_y=False
    )
    print(json.dumps(payload["results"], indent=1))


if __name__ == "__main__":
    main()
