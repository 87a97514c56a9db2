"""KV-cached against uncached sampling at 8 / 16 / 32 frames, and the cost of one more frame.

    python benchmarks/bench_sampling.py [--lengths 8 16 32] [--steps 8] [--threads 1]

Writes RESULTS/sampling.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results);
the logic lives in `harness.py` beside this script (also `mimo bench sampling`). `--help` lists the options.
"""

from harness import main

if __name__ == "__main__":
    main("sampling")
