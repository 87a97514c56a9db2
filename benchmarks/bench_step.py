"""Training-step time of MiMo at r = 0.25 / 0.5 / 0.75 against the CTF baseline, interleaved on one batch.

    python benchmarks/bench_step.py [--preset tiny] [--batch-size 8] [--rounds 5] [--threads 1]

Writes RESULTS/step.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results);
the logic lives in `harness.py` beside this script (also `mimo bench step`). `--help` lists the options.
"""

from harness import main

if __name__ == "__main__":
    main("step")
