"""Baseline and MiMo trained on the built-in videos, evaluated every K steps; the speed-up factor.
Resumable: rerun the same command to continue (run folders in runs/bench/, evaluations in the result JSON).

    nohup python benchmarks/bench_convergence.py --config configs/bench/convergence-cpu.yaml --threads 1 \\
        --out benchmarks/results > benchmarks/results/convergence-cpu.log 2>&1 &

Writes RESULTS/CONFIG_NAME.json (with the machine it ran on) and refreshes RESULTS/README.md, RESULTS being --out
(default runs/bench-results; the published ones: --out benchmarks/results);
the logic lives in `harness.py` beside this script (also `mimo bench convergence`). `--help` lists the options.
"""

from harness import main

if __name__ == "__main__":
    main("convergence")
