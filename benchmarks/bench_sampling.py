"""KV-cached against uncached sampling at 8 / 16 / 32 frames, and the cost of one more frame.

    python benchmarks/bench_sampling.py [--lengths 8 16 32] [--steps 8] [--threads 1]

Writes benchmarks/results/sampling.json (with the machine it ran on) and refreshes benchmarks/results/README.md;
the logic lives in `mimo.bench` (also `mimo bench sampling`). `--help` lists the options.
"""

from mimo.bench import main

if __name__ == "__main__":
    main("sampling")
