"""Memory per GPU of one training step of each config, counted on fake tensors without running it.

    python benchmarks/bench_memory.py configs/ucf101/uncond-B.yaml [more configs] [--gpus 8] [--set KEY=VALUE ...]

Parameters, gradients, optimizer state and activations at the config's real sizes (mimo.train.memory: CUDA
autocast dtype rules, FlexAttention's saved tensors, checkpointing and FSDP sharding derived), with the peak
per GPU. Writes RESULTS/memory.json (one config: memory-NAME.json) and refreshes RESULTS/README.md, RESULTS
being --out (default runs/bench-results; the published ones: --out benchmarks/results); also
`mimo bench memory`; `--help` lists the options.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see mimo.cli)

from bench_convergence import load_convergence_config
from harness import main
from mimo.config import load_config, read_yaml
from mimo.train.memory import GPU_MEMORY_GB, preset_world_size, training_memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", type=Path, nargs="+", help="training configs (YAML)")
    parser.add_argument("--gpus", type=int, default=None, help="ranks (default: 8 for FSDP presets, else 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")


def result_name(args: argparse.Namespace) -> str:
    return "memory-" + args.configs[0].stem if len(args.configs) == 1 else "memory"


def measure(args: argparse.Namespace, publish: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """The census of every config; a convergence config is counted with its MiMo arm's training settings."""
    results = {}
    for path in args.configs:
        if "benchmark" in read_yaml(path):
            config = load_convergence_config(path, args.set)[0]
        else:
            config = load_config(path, args.set)
        results[str(path)] = training_memory(config, args.gpus or preset_world_size(config)).to_json()
    return {"settings": {"gpu_memory_gb": GPU_MEMORY_GB, "overrides": args.set}, "results": results}


if __name__ == "__main__":
    main("memory")
