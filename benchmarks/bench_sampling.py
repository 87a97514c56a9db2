"""KV-cached against uncached sampling at 8 / 16 / 32 frames, and the cost of one more frame.

    python benchmarks/bench_sampling.py [--lengths 8 16 32] [--steps 8] [--threads 1]

Writes RESULTS/sampling.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results); also `mimo bench sampling`;
`--help` lists the options.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mimo.cli)

import torch

from harness import (
    add_model_arguments,
    main,
    model_overrides,
    rounded_median,
    settings_of,
    timed,
)
from mimo.config import SampleConfig, load_config
from mimo.diffusion.sampler import sample_video
from mimo.models import build_backbone
from mimo.train.distributed import default_device

# --tiny: a seconds-long smoke run (tests); its figures mean nothing.
TINY = {"preset": "micro", "frame_size": 16, "lengths": [2, 4], "batch_size": 1, "steps": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32], help="frames generated")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="Euler steps per frame")
    parser.add_argument("--rounds", type=int, default=1)


def measure(args: argparse.Namespace, publish: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Cached against uncached generation at several lengths, interleaved, and the marginal cost of a frame."""
    config = load_config(args.config, [*model_overrides(args), "train.task=unconditional"])
    device = torch.device(default_device())
    torch.manual_seed(config.train.seed)
    model = build_backbone(config).to(device).eval()  # untrained: the cost does not depend on the weights

    def generate(frames: int, use_cache: bool) -> Callable[[], Any]:
        generator = torch.Generator().manual_seed(0)
        options = SampleConfig(steps=args.steps, use_cache=use_cache)
        return lambda: sample_video(model, frames, options, batch_size=args.batch_size, generator=generator)

    times: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for frames in args.lengths:
            for use_cache in (True, False):
                times.setdefault((frames, use_cache), []).append(timed(generate(frames, use_cache), device))
    lengths = {}
    for frames in args.lengths:
        row = {}
        for kind, use_cache in (("cached", True), ("uncached", False)):
            row[f"{kind}_s"] = rounded_median([wall for wall, _ in times[frames, use_cache]])
            row[f"{kind}_cpu_s"] = rounded_median([cpu for _, cpu in times[frames, use_cache]])
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
    settings = settings_of(args, config, device, ode_steps=args.steps, solver="euler", rounds=args.rounds, window=None)
    return {"settings": settings, "results": {"lengths": lengths, "marginal_cost": marginal}}


if __name__ == "__main__":
    main("sampling")
