"""Which sampler settings make a trained model's rollouts keep their objects? Measured on validation clips.

    python benchmarks/sampler_sweep.py reference --set sample.history_guidance=2 sample.history_guidance=3 \
        "sample.history_guidance=3 sample.steps=40"

Each `--set` entry (space-separated overrides in one string) is one setting; every setting samples the same
`--clips` built-in clips of `--seed` (777 by default: neither training's seed 0, the card's EVAL_SEED nor the
CI check's) with the same noise, at the training length and at twice it, and is scored by trajectory error and
objects lost against copy-last and the real frames. Settings are chosen here, then measured once on the card's
clips (benchmarks/reference_card.py), so the card's numbers are not tuned on the clips they report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from harness import machine_info
from mimo.config import with_sampling_overrides
from mimo.data import stack_clips
from mimo.data.synthetic import MovingShapes
from mimo.evaluation.motion import copy_last_scores, motion_scores, real_frame_scores
from mimo.train.checkpoint import load_trained_model

VALIDATION_SEED = 777


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run (train.out_dir) or 'reference' (the shipped model)")
    parser.add_argument("--set", nargs="+", default=[""], help="one setting per entry: 'sample.KEY=V sample.KEY=V'")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_trained_model(args.run)
    data = config.data
    clips = stack_clips(
        MovingShapes(args.clips, data.frame_size, 2 * data.num_frames, args.seed, data.max_objects), args.clips
    )
    rows = {"copy-last": copy_last_scores(config, clips), "real frames": real_frame_scores(config, clips)}
    for setting in args.set:
        configured = with_sampling_overrides(config, shlex.split(setting), ("sample.",))
        torch.manual_seed(0)
        start = time.perf_counter()
        rows[setting or "as trained"] = motion_scores(model, configured, clips, teacher_forced_at=())
        rows[setting or "as trained"]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"| setting ({args.clips} clips, seed {args.seed}) | ar_px | ar_lost | ar2_px | ar2_lost | s |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [row[key] for key in ("ar_px", "ar_lost", "ar2_px", "ar2_lost")] + [row.get("seconds", "")]
        print(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    if args.out:
        report = {"run": args.run, "seed": args.seed, "rows": rows, "machine": machine_info(torch.device("cpu"))}
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
