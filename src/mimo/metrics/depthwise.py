"""Depth-wise analysis (the paper's depth-wise figures): probe and CKNNA of features at every layer.

A probe's held-out split is one random draw, so a single accuracy carries the split's noise; here
every layer is probed with several split seeds and reported as mean ± std over them. Each probe is
exactly `mimo.metrics.probe.linear_probe` at that layer and seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mimo.metrics.cknna import DEFAULT_TOP_K, cknna
from mimo.metrics.probe import DEFAULT_C_GRID, linear_probe

DEFAULT_PROBE_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class LayerScores:
    """Probe accuracies of one layer (one per seed) and its CKNNA with a reference (None without one)."""

    accuracies: tuple[float, ...]
    cknna: float | None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def depthwise_scores(
    features: Mapping[int, torch.Tensor],
    labels: torch.Tensor,
    seeds: Sequence[int] = DEFAULT_PROBE_SEEDS,
    c: float | Sequence[float] = DEFAULT_C_GRID,
    reference: torch.Tensor | None = None,
    k: int = DEFAULT_TOP_K,
) -> dict[int, LayerScores]:
    """{layer: LayerScores} for features {layer: (N, D)} of the same N samples with labels (N,).

    `reference` (N, E): features of another representation for CKNNA (e.g. a pretrained encoder).
    """
    if not seeds:
        raise ValueError("give at least one probe seed")
    return {
        layer: LayerScores(
            accuracies=tuple(linear_probe(x, labels, c=c, seed=seed).held_out_accuracy for seed in seeds),
            cknna=None if reference is None else cknna(x, reference, k),
        )
        for layer, x in sorted(features.items())
    }
