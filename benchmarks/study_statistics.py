"""Seed-level statistics of the study (benchmarks/mimo_study.py): the unit of replication is the seed.

Each seed trains one model per arm from the same weights, clips and noise, so an arm's effect is the
per-seed difference arm − baseline, tested over seeds (a one-sample t-test of the differences: a
paired t-test). Clips of one seed are not replicates of training: pooling seeds × clips into one test
describes a few trained models, not the arm (pseudo-replication). Where clips are wanted, each seed's
own paired t-test over its clips is reported with its direction, as a description of that one model.
A table of many tests gets Holm's step-down adjustment (Holm 1979, Scand. J. Statist. 6: 65-70),
which bounds the chance of any false positive in the table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def t_test_p(differences: Sequence[float]) -> float:
    """Two-sided p of a one-sample t-test of `differences` against 0; NaN when fewer than two."""
    return float(stats.ttest_1samp(differences, 0.0).pvalue) if len(differences) > 1 else math.nan


def paired_over_seeds(differences: Sequence[float]) -> dict[str, Any]:
    """The arm's test: per-seed differences arm − baseline, their mean ± std and the t-test over seeds."""
    return {
        "difference": mean_std(differences),
        "per_seed": list(differences),
        "t_test_p": t_test_p(differences),
        "pairs": len(differences),
    }


def within_seed(clip_differences: Mapping[int, np.ndarray]) -> list[dict[str, float]]:
    """Per seed, its model's mean clip difference and the paired t-test over its clips (that model, not the arm)."""
    return [
        {
            "seed": seed,
            "difference": float(np.mean(values)),
            "t_test_p": t_test_p(values.tolist()),
            "clips": len(values),
        }
        for seed, values in clip_differences.items()
    ]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given; a NaN (no test) stays NaN and is not counted in the family."""
    tested = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # step-down: never below a smaller p's
        adjusted[index] = running
    return adjusted
