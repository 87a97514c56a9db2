"""Which sampler settings make a trained model's rollouts keep their objects? Measured on validation clips.

    python benchmarks/sampler_sweep.py reference --set sample.history_guidance=2 sample.history_guidance=3 \
        "sample.history_guidance=3 sample.steps=40"

Each `--set` entry (space-separated overrides in one string) is one setting; every setting samples the same
`--clips` built-in clips of each of `--seeds` (777 by default: neither training's seed 0, the card's EVAL_SEED
nor the CI check's) with the same noise, at the training length and at twice it, and is scored by trajectory
error and objects lost against copy-last and the real frames; with several seeds, the difference to copy-last
is summarised over the seeds' blocks of clips (paired: the same clips). Settings are chosen here, then measured
once on the card's clips (benchmarks/reference_card.py), so the card's numbers are not tuned on the clips they
report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

import torch
from scipy import stats

from harness import machine_info
from mimo.config import with_sampling_overrides
from mimo.evaluation.motion import copy_last_scores, motion_scores, real_frame_scores
from mimo.evaluation.protocols import held_out_clips
from mimo.train.checkpoint import load_trained_model

VALIDATION_SEED = 777
SCORES = ("ar_px", "ar_lost", "ar2_px", "ar2_lost")


def score_block(model, config, settings: list[str], seed: int, count: int) -> dict[str, dict[str, float]]:
    """Every setting's scores, copy-last's and the real frames' on `count` clips of `seed`."""
    clips = held_out_clips(config, 2 * config.data.num_frames, count, seed)
    rows = {"copy-last": copy_last_scores(config, clips), "real frames": real_frame_scores(config, clips)}
    for setting in settings:
        configured = with_sampling_overrides(config, shlex.split(setting), ("sample.",))
        torch.manual_seed(0)
        start = time.perf_counter()
        rows[setting or "as trained"] = motion_scores(model, configured, clips, teacher_forced_at=())
        rows[setting or "as trained"]["seconds"] = round(time.perf_counter() - start, 1)
    return rows


def against_copy_last(blocks: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, str]]:
    """Per setting and score: the difference to copy-last, mean ± std over the seed blocks (each block is
    independent clips), with a paired t-test over blocks when there are at least 3."""
    summary: dict[str, dict[str, str]] = {}
    for name in next(iter(blocks.values())):
        summary[name] = {}
        for score in SCORES:
            differences = [rows[name][score] - rows["copy-last"][score] for rows in blocks.values()]
            text = f"{statistics.mean(differences):+.3f}"
            if len(differences) >= 3:
                p = stats.ttest_1samp(differences, 0).pvalue
                text += f" ± {statistics.stdev(differences):.3f} (p {p:.2g}, lower in {sum(d < 0 for d in differences)}"
                text += f"/{len(differences)})"
            summary[name][score] = text
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run (train.out_dir) or 'reference' (the shipped model)")
    parser.add_argument("--set", nargs="+", default=[""], help="one setting per entry: 'sample.KEY=V sample.KEY=V'")
    parser.add_argument("--clips", type=int, default=64, help="clips per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[VALIDATION_SEED], help="one block of clips each")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_trained_model(args.run)
    blocks = {seed: score_block(model, config, args.set, seed, args.clips) for seed in args.seeds}
    for seed, rows in blocks.items():
        print(f"\n| setting ({args.clips} clips, seed {seed}) | " + " | ".join(SCORES) + " | s |")
        print("|---" * (len(SCORES) + 2) + "|")
        for name, row in rows.items():
            cells = [row[key] for key in SCORES] + [row.get("seconds", "")]
            print(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    summary = against_copy_last(blocks)
    print(f"\n| minus copy-last ({len(blocks)} seeds of {args.clips} clips) | " + " | ".join(SCORES) + " |")
    print("|---" * (len(SCORES) + 1) + "|")
    for name, row in summary.items():
        print(f"| {name} | " + " | ".join(row[score] for score in SCORES) + " |")
    if args.out:
        report = {"run": args.run, "clips_per_seed": args.clips, "blocks": blocks, "against_copy_last": summary}
        report["machine"] = machine_info(torch.device("cpu"))
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
