"""Training-step time of MiMo at r = 0.25 / 0.5 / 0.75 against the CTF baseline, interleaved on one batch.

    python benchmarks/bench_step.py [--preset tiny] [--batch-size 8] [--rounds 5] [--threads 1]

Writes RESULTS/step.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results); also `mimo bench step`;
`--help` lists the options.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mimo.cli)

from harness import (
    add_model_arguments,
    arm_overrides,
    arm_trainer,
    fixed_batch,
    main,
    model_overrides,
    paired_ratio,
    rounded_median,
    settings_of,
    significant,
    step_of,
    timed,
)
from mimo.config import load_config

# --tiny: a seconds-long smoke run (tests); its figures mean nothing.
TINY = {"preset": "micro", "frame_size": 16, "frames": 4, "batch_size": 2, "rounds": 2, "warmup": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--frames", type=int, default=8, help="clip length T")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="MiMo mask ratios")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of one step per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")


def measure(args: argparse.Namespace, publish: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Step time of MiMo at each mask ratio against the baseline, interleaved round by round on one batch."""
    config = load_config(args.config, [*model_overrides(args), f"train.batch_size={args.batch_size}"])
    batch = fixed_batch(config, args.batch_size)
    arms = arm_overrides(args.ratios)
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {name: arm_trainer(config, o, Path(scratch) / name) for name, o in arms.items()}
        device = next(iter(trainers.values())).device
        steps = {name: step_of(trainer, batch) for name, trainer in trainers.items()}
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
        step_flops = {name: t.objective.training_flops(args.batch_size) for name, t in trainers.items()}
        tokens = {name: t.objective.layout().length for name, t in trainers.items()}
    results = {}
    base_flops = step_flops["baseline"].dense
    for name in arms:
        flops = step_flops[name]
        wall_ratio = paired_ratio(wall[name], wall["baseline"])
        results[name] = {
            "mask_ratio": configs[name].mimo.mask_ratio,
            "mimo_weight": configs[name].mimo.weight,
            "tokens_per_clip": tokens[name],
            "flops_per_step": flops.dense,
            "wall_s": [significant(x, 6) for x in wall[name]],  # the ratios can be recomputed from these
            "cpu_s": [significant(x, 6) for x in cpu[name]],
            "median_wall_s": rounded_median(wall[name]),
            "median_cpu_s": rounded_median(cpu[name]),
            "wall_ratio_to_baseline": round(wall_ratio, 3),
            "cpu_ratio_to_baseline": round(paired_ratio(cpu[name], cpu["baseline"]), 3),
            "flop_ratio_to_baseline": round(flops.dense / base_flops, 3),
            "faster_than_baseline_percent": round(100 * (1 - wall_ratio), 1),
        }
    settings = settings_of(args, configs["baseline"], device, rounds=args.rounds, warmup=args.warmup)
    return {"settings": settings, "results": results}


if __name__ == "__main__":
    main("step")
