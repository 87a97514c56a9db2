"""FLOPs of a training step (analytic, cross-checked by FlopCounterMode) against this machine's matmul
peak, and peak memory; on a GPU also bf16 model FLOP utilisation of the B and XL presets.

    python benchmarks/bench_utilization.py [--batch-size 8] [--steps 3] [--threads 1]

Writes RESULTS/utilization.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results);
the logic lives in `harness.py` beside this script (also `mimo bench utilization`). `--help` lists the options.
"""

from harness import main

if __name__ == "__main__":
    main("utilization")
